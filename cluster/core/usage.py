"""Usage accounting: the reserved resources a run or a deployment held, and for how long.

A period opens in the same write that moves a run to Starting or records a deployment
(jobs/models/state.py, jobs/models/deployments.py), with the resources of the bundles it
took, and closes in the write that moves it to a status that holds none. A period still
open counts up to now. Hours are resources x time held: CPU-hours, GPU-hours, GiB-hours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Float,
    Integer,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)

from cluster.core.accounts import tenants
from cluster.core.reservations import Resources, bundles_for
from cluster.core.store import Store, metadata, utcnow

usage_periods = Table(
    "usage_periods",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, nullable=False, index=True),  # no key: kept past its rows
    Column("kind", String(16), nullable=False),  # "run" | "deployment"
    Column("model_id", Integer, nullable=False, index=True),
    Column("attempt", Integer),  # a run's attempt
    Column("cpus", Float, nullable=False),
    Column("gpus", Float, nullable=False),
    Column("memory", BigInteger, nullable=False),  # bytes
    Column("started_at", DateTime, nullable=False),
    Column("ended_at", DateTime),  # None while held
)

GIB = float(1 << 30)


@dataclass(frozen=True)
class Period:
    tenant_id: int
    kind: str
    model_id: int
    attempt: int | None
    cpus: float
    gpus: float
    memory: int
    started_at: dt.datetime
    ended_at: dt.datetime | None

    def held_s(self, since: dt.datetime | None, now: dt.datetime) -> float:
        """Seconds held inside [since, now]."""
        start = max(self.started_at, since) if since else self.started_at
        end = min(self.ended_at or now, now)
        return max((end - start).total_seconds(), 0.0)


def held(conn: Connection, tenant_id: int, placement: Sequence[int]) -> Resources:
    """What the bundles at these indexes of the tenant's reservation hold now."""
    row = conn.execute(select(tenants).where(tenants.c.id == tenant_id)).first()
    if row is None:
        return Resources(0.0, 0.0, 0)
    shapes = bundles_for(Resources(row.cpus, row.gpus, row.memory))
    total = Resources(0.0, 0.0, 0)
    for i in placement:
        shape = shapes[i] if 0 <= i < len(shapes) else {"CPU": 1.0}
        total = total.plus(
            Resources(shape.get("CPU", 0.0), shape.get("GPU", 0.0), int(shape.get("memory", 0)))
        )
    return total


def open_period(
    conn: Connection,
    tenant_id: int,
    kind: str,
    model_id: int,
    placement: Sequence[int],
    attempt: int | None = None,
) -> None:
    """Start counting (closing first any period of the same object left open)."""
    close_period(conn, kind, model_id)
    found = held(conn, tenant_id, placement)
    conn.execute(
        insert(usage_periods).values(
            tenant_id=tenant_id,
            kind=kind,
            model_id=model_id,
            attempt=attempt,
            cpus=found.cpus,
            gpus=found.gpus,
            memory=found.memory,
            started_at=utcnow(),
        )
    )


def close_period(conn: Connection, kind: str, model_id: int) -> None:
    conn.execute(
        update(usage_periods)
        .where(
            (usage_periods.c.kind == kind)
            & (usage_periods.c.model_id == model_id)
            & usage_periods.c.ended_at.is_(None)
        )
        .values(ended_at=utcnow())
    )


def periods(
    store: Store, tenant_ids: Sequence[int] | None, since: dt.datetime | None
) -> list[Period]:
    """The periods of these tenants (None: all) that were held at some time after `since`."""
    query = select(usage_periods).order_by(usage_periods.c.id)
    if tenant_ids is not None:
        query = query.where(usage_periods.c.tenant_id.in_(list(tenant_ids)))
    if since is not None:
        query = query.where(usage_periods.c.ended_at.is_(None) | (usage_periods.c.ended_at > since))
    with store.read() as conn:
        rows = conn.execute(query).all()
    return [
        Period(
            tenant_id=r.tenant_id,
            kind=r.kind,
            model_id=r.model_id,
            attempt=r.attempt,
            cpus=r.cpus,
            gpus=r.gpus,
            memory=r.memory,
            started_at=r.started_at,
            ended_at=r.ended_at,
        )
        for r in rows
    ]


def forget_tenant(store: Store, tenant_id: int) -> None:
    with store.write() as conn:
        conn.execute(delete(usage_periods).where(usage_periods.c.tenant_id == tenant_id))
