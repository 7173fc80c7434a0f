"""Usage per tenant, per run and per deployment: resources held x hours (cluster.core.usage).

A model's runs (every attempt) are one row, its deployments another; a period still held
counts up to now, and one that began before `since` counts from `since`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from cluster.core import accounts, usage
from cluster.core.store import Store, utcnow
from jobs.models import state as models
from ncloud import responses

HOUR = 3600.0


def _hours(cpus: float, gpus: float, memory: int, held_s: float) -> dict[str, float]:
    return {
        "cpu_hours": cpus * held_s / HOUR,
        "gpu_hours": gpus * held_s / HOUR,
        "memory_gib_hours": memory / usage.GIB * held_s / HOUR,
    }


def report(store: Store, tenant: str | None, since: dt.datetime | None) -> responses.Usage:
    """One tenant's usage, or (tenant None: admins) every tenant's."""
    now = utcnow()
    names = {t.id: t.name for t in accounts.list_tenants(store)}
    ids = [accounts.get_tenant(store, tenant).id] if tenant is not None else None
    found = usage.periods(store, ids, since)
    model_names = models.names_of(store, ids, {p.model_id for p in found})
    items: dict[tuple[int, str, int], dict[str, Any]] = {}
    for p in found:
        held_s = p.held_s(since, now)
        key = (p.tenant_id, p.kind, p.model_id)
        row = items.setdefault(
            key,
            {
                "tenant": names.get(p.tenant_id, f"#{p.tenant_id}"),
                "kind": p.kind,
                "model": p.model_id,
                "name": model_names.get(p.model_id),
                "periods": 0,
                "held_s": 0.0,
                "cpu_hours": 0.0,
                "gpu_hours": 0.0,
                "memory_gib_hours": 0.0,
                "running": False,
            },
        )
        row.update(cpus=p.cpus, gpus=p.gpus, memory=p.memory)  # the latest period's
        row["periods"] += 1
        row["held_s"] += held_s
        for k, v in _hours(p.cpus, p.gpus, p.memory, held_s).items():
            row[k] += v
        row["running"] = row["running"] or p.ended_at is None
    totals: dict[str, dict[str, Any]] = {}
    for row in items.values():
        total = totals.setdefault(
            row["tenant"],
            {"tenant": row["tenant"], "cpu_hours": 0.0, "gpu_hours": 0.0, "memory_gib_hours": 0.0},
        )
        for k in ("cpu_hours", "gpu_hours", "memory_gib_hours"):
            total[k] += row[k]
    return {
        "since": since.isoformat() if since else None,
        "until": now.isoformat(),
        "tenants": cast(list[responses.UsageTotal], list(totals.values())),
        "items": cast(list[responses.UsageItem], list(items.values())),
    }
