"""The audit log: every state-changing API call, who made it, on what, and how it ended.

One row per authenticated POST, PUT, PATCH or DELETE (written by serve/audit.py once the
answer is sent). Rows name the user and tenant as text, not by key, so they outlive the
user, the tenant and the object; nothing but an admin's query reads them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, DateTime, Integer, String, Table, Text, insert, select

from cluster.core.store import Store, metadata, utcnow

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime, nullable=False, index=True),
    Column("user_email", String(320), nullable=False, index=True),
    Column("tenant", String(64)),  # the tenant it acted in, when it named or had one
    Column("action", String(200), nullable=False),  # "POST /models/{model_id}/stop"
    Column("object", String(200)),  # "model_id=3"
    Column("status", Integer, nullable=False),  # the HTTP status answered
    Column("outcome", String(64), nullable=False),  # "ok" or the error's code
    Column("address", String(64)),  # the client's address
    Column("detail", Text),  # the error's message, cut to 500 characters
)

MAX_DETAIL = 500
MAX_LIST = 10_000


@dataclass(frozen=True)
class Entry:
    id: int
    at: dt.datetime
    user: str
    tenant: str | None
    action: str
    object: str | None
    status: int
    outcome: str
    address: str | None
    detail: str | None


def record(store: Store, entry: Entry) -> None:
    with store.write() as conn:
        conn.execute(
            insert(audit_log).values(
                at=entry.at,
                user_email=entry.user,
                tenant=entry.tenant,
                action=entry.action[:200],
                object=(entry.object or "")[:200] or None,
                status=entry.status,
                outcome=entry.outcome[:64],
                address=entry.address,
                detail=(entry.detail or "")[:MAX_DETAIL] or None,
            )
        )


def entry(
    user: str,
    tenant: str | None,
    action: str,
    obj: str | None,
    status: int,
    outcome: str,
    address: str | None = None,
    detail: str | None = None,
) -> Entry:
    """A row to record, stamped now (its id is the store's)."""
    return Entry(0, utcnow(), user, tenant, action, obj, status, outcome, address, detail)


def entries(
    store: Store,
    user: str | None = None,
    since: dt.datetime | None = None,
    tenant: str | None = None,
    limit: int = 1000,
) -> list[Entry]:
    """The newest `limit` rows (oldest first), filtered by user, tenant and time."""
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(min(limit, MAX_LIST))
    if user is not None:
        query = query.where(audit_log.c.user_email == user.lower())
    if tenant is not None:
        query = query.where(audit_log.c.tenant == tenant)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    with store.read() as conn:
        rows = conn.execute(query).all()
    return [_entry(r) for r in reversed(rows)]


def _entry(r: Any) -> Entry:
    return Entry(
        id=r.id,
        at=r.at,
        user=r.user_email,
        tenant=r.tenant,
        action=r.action,
        object=r.object,
        status=r.status,
        outcome=r.outcome,
        address=r.address,
        detail=r.detail,
    )
