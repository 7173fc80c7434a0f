"""A model's deployment: the table, its status machine, its own token, and the bundles it holds.

``Deploying -> Deployed`` (or ``Failed``), ``Deployed -> Undeploying -> Undeployed``. One
row per model (a redeploy reuses it). The deployment token (``ncd_<model>_<secret>``) is
shown once at deploy time, stored hashed, compared in constant time and revocable; it
works for that deployment's predictions and nothing else.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)

from cluster.core import accounts, transitions, usage
from cluster.core.store import Store, metadata, utcnow
from jobs.models import state as models
from ncloud import responses
from ncloud.errors import Conflict, Unauthenticated


class DeploymentStatus(StrEnum):
    DEPLOYING = "Deploying"
    DEPLOYED = "Deployed"
    UNDEPLOYING = "Undeploying"
    UNDEPLOYED = "Undeployed"
    FAILED = "Failed"

    def holds_bundles(self) -> bool:
        return self in (DeploymentStatus.DEPLOYING, DeploymentStatus.DEPLOYED)


# Which status may follow which; anything else is a Conflict. A redeploy of an Undeployed or
# Failed model starts a new row (`begin`), not a transition.
TRANSITIONS = {
    DeploymentStatus.DEPLOYING: {
        DeploymentStatus.DEPLOYING,  # redeployed after a restart (recovery)
        DeploymentStatus.DEPLOYED,
        DeploymentStatus.FAILED,
        DeploymentStatus.UNDEPLOYING,
        DeploymentStatus.UNDEPLOYED,  # the tenant removed with --force
    },
    DeploymentStatus.DEPLOYED: {
        DeploymentStatus.DEPLOYING,
        DeploymentStatus.UNDEPLOYING,
        DeploymentStatus.UNDEPLOYED,
    },
    DeploymentStatus.FAILED: {DeploymentStatus.UNDEPLOYING},
    DeploymentStatus.UNDEPLOYING: {DeploymentStatus.UNDEPLOYED},
    DeploymentStatus.UNDEPLOYED: set(),
}

deployments = Table(
    "deployments",
    metadata,
    Column("model_id", Integer, ForeignKey("models.id"), primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("replicas", Integer, nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("checkpoint", Integer),
    Column("placement", Text),  # JSON: the bundle of each replica
    Column("token_hash", String(64)),
    Column("batching", Text),  # JSON: Batching
    Column("error", Text),
    Column("served", BigInteger),  # requests answered 200, written by replicas every few s
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)


@dataclass(frozen=True)
class Batching:
    """How a replica batches: inputs per forward, how long a batch waits to fill, and how
    many inputs may wait in one replica before new requests are answered 503."""

    max_batch: int = 32
    batch_wait_ms: float = 5.0
    max_queue: int = 256
    # and the volumes its network reads: [{"id", "path"}], mounted read-only
    volumes: tuple[dict[str, Any], ...] = ()

    def mounts(self) -> list[tuple[int, str]]:
        return [(int(v["id"]), str(v["path"])) for v in self.volumes]

    @classmethod
    def from_json(cls, text: str | None) -> Batching:
        raw = json.loads(text) if text else {}
        return cls(**{**raw, "volumes": tuple(raw.get("volumes") or ())})


@dataclass(frozen=True)
class Deployment:
    model_id: int
    tenant: str
    status: DeploymentStatus
    replicas: int
    gpus: int
    checkpoint: int | None
    placement: list[int]
    has_token: bool
    error: str | None
    updated_at: dt.datetime
    batching: Batching = Batching()
    served: int = 0

    @property
    def app_name(self) -> str:
        return app_name(self.model_id)

    def as_json(self) -> responses.Deployment:
        b = self.batching
        return {
            "model": self.model_id,
            "status": self.status.value,
            "replicas": self.replicas,
            "gpus": self.gpus,
            "checkpoint": self.checkpoint,
            "max_batch": b.max_batch,
            "batch_wait_ms": b.batch_wait_ms,
            "max_queue": b.max_queue,
            "volumes": responses.mounted(b.volumes),
            "route": route(self.model_id),
            "token_active": self.has_token,
            "error": self.error,
            "served": self.served,
            "updated_at": self.updated_at.isoformat(),
        }


def app_name(model_id: int) -> str:
    return f"ncloud-model-{model_id}"


def route(model_id: int) -> str:
    return f"/models/{model_id}"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _deployment(tenant: str, row: Any) -> Deployment:
    m = row._mapping
    return Deployment(
        m["model_id"],
        tenant,
        DeploymentStatus(m["status"]),
        m["replicas"],
        m["gpus"],
        m["checkpoint"],
        json.loads(m["placement"] or "[]"),
        m["token_hash"] is not None,
        m["error"],
        m["updated_at"],
        Batching.from_json(m["batching"]),
        int(m["served"] or 0),
    )


def find(store: Store, tenant: str, model_id: int) -> Deployment | None:
    models.get(store, tenant, model_id)  # another tenant's model: 404
    with store.read() as conn:
        row = conn.execute(select(deployments).where(deployments.c.model_id == model_id)).first()
    return _deployment(tenant, row) if row is not None else None


def get(store: Store, tenant: str, model_id: int) -> Deployment:
    found = find(store, tenant, model_id)
    if found is None:
        raise Conflict(f"model {model_id} is not deployed (ncloud model deploy {model_id})")
    return found


def begin(
    store: Store,
    tenant: str,
    model_id: int,
    replicas: int,
    gpus: int,
    checkpoint: int | None,
    placement: list[int],
    batching: Batching,
) -> tuple[Deployment, str]:
    """Record a new deployment (Deploying) with a fresh token; returns it and the token."""
    current = find(store, tenant, model_id)
    if current is not None and current.status.holds_bundles():
        raise Conflict(f"model {model_id} is {current.status.value} already")
    if current is not None and current.status is DeploymentStatus.UNDEPLOYING:
        raise Conflict(f"model {model_id} is still undeploying; try again in a moment")
    secret = secrets.token_urlsafe(32)
    values = {
        "status": DeploymentStatus.DEPLOYING.value,
        "replicas": replicas,
        "gpus": gpus,
        "checkpoint": checkpoint,
        "placement": json.dumps(placement),
        "token_hash": _hash(secret),
        "batching": json.dumps(asdict(batching)),
        "error": None,
        "served": 0,
        "updated_at": utcnow(),
    }
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.write() as conn:
        conn.execute(delete(deployments).where(deployments.c.model_id == model_id))
        conn.execute(
            insert(deployments).values(
                model_id=model_id, tenant_id=tenant_id, created_at=utcnow(), **values
            )
        )
        usage.open_period(conn, tenant_id, "deployment", model_id, placement)
    return get(store, tenant, model_id), f"ncd_{model_id}_{secret}"


def move(store: Store, tenant: str, model_id: int, to: DeploymentStatus, **values: Any) -> None:
    """Change status (checked against TRANSITIONS in the same write) and other columns."""
    tenant_id = accounts.get_tenant(store, tenant).id
    transitions.move(
        store,
        deployments,
        (deployments.c.model_id == model_id) & (deployments.c.tenant_id == tenant_id),
        TRANSITIONS,
        to,
        {"updated_at": utcnow(), **values},
        what=f"model {model_id}'s deployment",
        status_now=lambda: get(store, tenant, model_id).status,
    )
    if not to.holds_bundles():  # usage: its bundles are free from here
        with store.write() as conn:
            usage.close_period(conn, "deployment", model_id)


def add_served(store: Store, model_id: int, n: int) -> None:
    """Requests a replica of this deployment answered (the replica's own model, by id)."""
    with store.write() as conn:
        conn.execute(
            update(deployments)
            .where(deployments.c.model_id == model_id)
            .values(served=func.coalesce(deployments.c.served, 0) + n)
        )


def revoke_token(store: Store, tenant: str, model_id: int) -> None:
    get(store, tenant, model_id)
    with store.write() as conn:
        conn.execute(
            update(deployments).where(deployments.c.model_id == model_id).values(token_hash=None)
        )


def holding(store: Store, tenant: str) -> list[Deployment]:
    """The tenant's deployments that hold bundles of its reservation."""
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.read() as conn:
        rows = conn.execute(select(deployments).where(deployments.c.tenant_id == tenant_id)).all()
    return [d for d in (_deployment(tenant, r) for r in rows) if d.status.holds_bundles()]


def states(store: Store, tenant: str) -> dict[int, DeploymentStatus]:
    """Each of the tenant's deployed (or once deployed) models' status, in one query."""
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.read() as conn:
        rows = conn.execute(
            select(deployments.c.model_id, deployments.c.status).where(
                deployments.c.tenant_id == tenant_id
            )
        ).all()
    return {int(r[0]): DeploymentStatus(r[1]) for r in rows}


def all_in(store: Store, statuses: set[DeploymentStatus]) -> list[Deployment]:
    with store.read() as conn:
        rows = conn.execute(
            select(deployments, accounts.tenants.c.name.label("tenant_name"))
            .join(accounts.tenants, accounts.tenants.c.id == deployments.c.tenant_id)
            .where(deployments.c.status.in_([s.value for s in statuses]))
        ).all()
    return [_deployment(r._mapping["tenant_name"], r) for r in rows]


def check_token(store: Store, model_id: int, token: str) -> None:
    """Passes for this deployment's own live token; Unauthenticated for anything else."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "ncd" or not parts[2]:
        raise Unauthenticated("invalid or revoked deployment token")
    with store.read() as conn:
        row = conn.execute(
            select(deployments.c.token_hash).where(deployments.c.model_id == model_id)
        ).first()
    expected = row[0] if row is not None and row[0] else _hash("")
    matches = hmac.compare_digest(expected, _hash(parts[2]))  # compared even when revoked
    if parts[1] != str(model_id) or not matches or row is None or row[0] is None:
        raise Unauthenticated("invalid or revoked deployment token")


def tenant_of(store: Store, model_id: int) -> str | None:
    with store.read() as conn:
        row = conn.execute(
            select(accounts.tenants.c.name)
            .join(models.models, models.models.c.tenant_id == accounts.tenants.c.id)
            .where(models.models.c.id == model_id)
        ).first()
    return str(row[0]) if row is not None else None


def ensure_missing(store: Store, tenant: str, model_id: int) -> None:
    found = find(store, tenant, model_id)
    if found is not None and found.status is not DeploymentStatus.UNDEPLOYED:
        raise Conflict(f"model {model_id} is {found.status.value}: undeploy it first")


ACTIVE = {models.RunStatus.STARTING, models.RunStatus.RUNNING}


def training_bundles(store: Store, tenant: str) -> set[int]:
    """Bundles of the tenant's reservation held by Starting or Running training runs."""
    return {b for r in models.tenant_runs_in(store, tenant, ACTIVE) for b in r.placement or []}


def bundles_in_use_across_tenants(store: Store) -> dict[str, set[int]]:
    """tenant -> its bundles held by training runs or deployments, every tenant in two
    queries (what a tick of the scheduler reads, however many tenants there are)."""
    held: dict[str, set[int]] = {}
    for run in models.runs_in(store, ACTIVE):
        held.setdefault(run.tenant, set()).update(run.placement or [])
    active = {s for s in DeploymentStatus if s.holds_bundles()}
    for dep in all_in(store, active):
        held.setdefault(dep.tenant, set()).update(dep.placement)
    return held


def bundles_in_use(store: Store, tenant: str) -> set[int]:
    """Bundles of the tenant's reservation held by training runs or deployments now."""
    held = training_bundles(store, tenant)
    return held | {b for d in holding(store, tenant) for b in d.placement}


def delete_for_model(conn: Connection, model_id: int) -> None:
    """The model's deployment record (jobs.models.removal calls this in its transaction)."""
    conn.execute(deployments.delete().where(deployments.c.model_id == model_id))
