"""One control plane per store: a lease row that the running controller renews.

Two control planes on one store would both schedule its runs. `server start` claims the
lease for its own id before it starts anything, and refuses while another id's lease is
fresh; the controller renews it every RENEW_S; `server stop` gives it back. A head that
died without stopping leaves a lease that goes stale after STALE_S.
"""

from __future__ import annotations

import datetime as dt
import secrets
import socket
from pathlib import Path

from sqlalchemy import Column, DateTime, Integer, String, Table, delete, insert, select, update

from cluster.core.store import Store, metadata, utcnow
from ncloud.errors import Conflict

RENEW_S = 5.0
STALE_S = 30.0

lease = Table(
    "control_lease",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1: there is one
    Column("owner", String(64), nullable=False),
    Column("host", String(255), nullable=False),
    Column("renewed_at", DateTime, nullable=False),
)


def owner_id(home: Path) -> str:
    """This server's id: made once per NCLOUD_HOME, so its own restarts hold the lease."""
    path = home / "control-id"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(8))
    return path.read_text().strip()


def claim(store: Store, owner: str, stale_s: float = STALE_S) -> None:
    """Take the lease for `owner`, or Conflict naming who holds it."""
    now = utcnow()
    with store.write() as conn:
        row = conn.execute(select(lease).where(lease.c.id == 1)).first()
        if row is None:
            conn.execute(
                insert(lease).values(id=1, owner=owner, host=socket.gethostname(), renewed_at=now)
            )
            return
        fresh = now - row.renewed_at < dt.timedelta(seconds=stale_s)
        if row.owner != owner and fresh:
            raise Conflict(
                f"another ncloud control plane (on {row.host}, renewed "
                f"{(now - row.renewed_at).total_seconds():.0f} s ago) uses this store: stop it "
                f"first, or wait {stale_s:g} s if its head is gone"
            )
        conn.execute(
            update(lease)
            .where(lease.c.id == 1)
            .values(owner=owner, host=socket.gethostname(), renewed_at=now)
        )


def renew(store: Store, owner: str) -> bool:
    """Renew our lease; False when another owner has it now (we lost it)."""
    with store.write() as conn:
        done = conn.execute(
            update(lease).where(lease.c.id == 1, lease.c.owner == owner).values(renewed_at=utcnow())
        )
    return bool(done.rowcount)


def release(store: Store, owner: str) -> None:
    with store.write() as conn:
        conn.execute(delete(lease).where(lease.c.id == 1, lease.c.owner == owner))
