"""Per-epoch metrics and log lines of a model's runs: the tables and their queries."""

from __future__ import annotations

import json
import math
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
)

from cluster.core import accounts
from cluster.core.store import Store, metadata, utcnow
from jobs.models import state as models
from ncloud import responses
from ncloud.training import valid_name

METRIC_KEYS = ("train_loss", "valid_loss", "valid_accuracy", "samples_per_s", "epoch_s")
MAX_CUSTOM = 16  # names a run may report (ncloud.training.MAX_METRICS)

epoch_metrics = Table(
    "epoch_metrics",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("model_id", Integer, ForeignKey("models.id"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("epoch", Integer, nullable=False),
    *[Column(key, Float) for key in METRIC_KEYS],
    Column("custom", Text),  # JSON {name: number}: what the spec reported (ncloud.training)
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("model_id", "epoch"),
)

log_lines = Table(
    "log_lines",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("model_id", Integer, ForeignKey("models.id"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("line", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
)


def record_epoch(store: Store, run: models.Run, tenant_id: int, values: dict[str, Any]) -> None:
    """Store one epoch's metrics; an epoch redone after a restart replaces the earlier row."""
    epoch = int(values["epoch"])
    row: dict[str, float | str | None] = {key: _number(values.get(key)) for key in METRIC_KEYS}
    # Checked again here: the sandbox that sent them is the tenant's, report() or not.
    custom = {
        k: float(v)
        for k, v in values.items()
        if k not in METRIC_KEYS and valid_name(k) and v is not None and math.isfinite(v)
    }
    row["custom"] = json.dumps(dict(list(custom.items())[:MAX_CUSTOM])) if custom else None
    with store.write() as conn:
        conn.execute(
            delete(epoch_metrics).where(
                (epoch_metrics.c.model_id == run.model_id) & (epoch_metrics.c.epoch >= epoch)
            )
        )
        conn.execute(
            insert(epoch_metrics).values(
                tenant_id=tenant_id,
                model_id=run.model_id,
                attempt=run.attempt,
                epoch=epoch,
                created_at=utcnow(),
                **row,
            )
        )
        conn.execute(
            models.runs.update().where(models.runs.c.id == run.id).values(epochs_done=epoch)
        )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _tenant_id(tenant: str) -> Any:
    return select(accounts.tenants.c.id).where(accounts.tenants.c.name == tenant).scalar_subquery()


def epochs(store: Store, tenant: str, model_id: int) -> list[dict[str, Any]]:
    """The model's per-epoch metrics, if the model is this tenant's (else none)."""
    with store.read() as conn:
        rows = conn.execute(
            select(epoch_metrics)
            .where(epoch_metrics.c.model_id == model_id)
            .where(epoch_metrics.c.tenant_id == _tenant_id(tenant))
            .order_by(epoch_metrics.c.epoch)
        ).all()
    return [
        {
            "epoch": r.epoch,
            "attempt": r.attempt,
            **{k: getattr(r, k) for k in METRIC_KEYS},
            **(json.loads(r.custom) if r.custom else {}),
        }
        for r in rows
    ]


def add_lines(store: Store, run: models.Run, tenant_id: int, lines: list[str]) -> None:
    if not lines:
        return
    now = utcnow()
    with store.write() as conn:
        conn.execute(
            insert(log_lines),
            [
                {
                    "tenant_id": tenant_id,
                    "model_id": run.model_id,
                    "attempt": run.attempt,
                    "line": line[:4000],
                    "created_at": now,
                }
                for line in lines
            ],
        )


def lines(
    store: Store, tenant: str, model_id: int, after: int = 0, limit: int = 1000
) -> list[responses.LogLine]:
    """Log lines with id > after, oldest first: [{id, attempt, line}]; the tenant's only."""
    with store.read() as conn:
        rows = conn.execute(
            select(log_lines.c.id, log_lines.c.attempt, log_lines.c.line)
            .where((log_lines.c.model_id == model_id) & (log_lines.c.id > after))
            .where(log_lines.c.tenant_id == _tenant_id(tenant))
            .order_by(log_lines.c.id)
            .limit(limit)
        ).all()
    return [{"id": r.id, "attempt": r.attempt, "line": r.line} for r in rows]


def delete_for_model(conn: Connection, model_id: int) -> None:
    conn.execute(delete(epoch_metrics).where(epoch_metrics.c.model_id == model_id))
    conn.execute(delete(log_lines).where(log_lines.c.model_id == model_id))
