"""The tenant's batch predictions: the table, the status machine, and where inputs and results live.

Over an ingested dataset a batch starts ``Queued``; over a new manifest it starts
``Uploading`` (the manifest's files arrive one by one) and ``start`` queues it. Then
``Queued -> Running -> Completed`` (or ``Failed`` with the reason). A bad input row does not
fail a batch: it becomes a result row with an ``error``, counted in ``bad_rows``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from cluster.core import accounts, storage, transitions
from cluster.core.store import Store, metadata, utcnow
from ncloud import responses
from ncloud.errors import InvalidInput, NotFound

FORMATS = ("csv", "jsonl")
MAX_K = 1000


class BatchStatus(StrEnum):
    UPLOADING = "Uploading"
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"

    def is_terminal(self) -> bool:
        return self in (BatchStatus.COMPLETED, BatchStatus.FAILED)


# Which status may follow which; anything else is a Conflict.
TRANSITIONS = {
    BatchStatus.UPLOADING: {BatchStatus.QUEUED, BatchStatus.FAILED},
    BatchStatus.QUEUED: {BatchStatus.RUNNING, BatchStatus.FAILED},
    BatchStatus.RUNNING: {BatchStatus.COMPLETED, BatchStatus.FAILED},
    BatchStatus.COMPLETED: set(),
    BatchStatus.FAILED: set(),
}

batch_predictions = Table(
    "batch_predictions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    # No foreign keys to models or datasets: removing either keeps the batch and its result.
    Column("model_id", Integer, nullable=False, index=True),
    Column("dataset_id", Integer),  # the input: an ingested dataset ...
    Column("manifest_name", String(255)),  # ... or a manifest uploaded for this batch
    Column("format", String(8), nullable=False),  # csv | jsonl
    Column("k", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("rows", BigInteger, nullable=False, default=0),
    Column("predicted", BigInteger, nullable=False, default=0),
    Column("bad_rows", BigInteger, nullable=False, default=0),
    Column("error", Text),
    Column("result", String(64)),  # the result file's name, once Completed
    Column("volumes", Text),  # JSON: [{"id", "path"}] the network reads, read-only
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    sqlite_autoincrement=True,  # its result file is named after the id
)


@dataclass(frozen=True)
class Batch:
    id: int
    tenant: str
    model_id: int
    dataset_id: int | None
    manifest_name: str | None
    format: str
    k: int
    status: BatchStatus
    rows: int
    predicted: int
    bad_rows: int
    error: str | None
    result: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    volumes: tuple[dict[str, Any], ...] = ()

    def mounts(self) -> list[tuple[int, str]]:
        return [(int(v["id"]), str(v["path"])) for v in self.volumes]

    @property
    def url(self) -> str:
        """This batch's folder: manifest, inputs/ (uploaded files) and the result."""
        return storage.tenant_url(self.tenant, "batches", str(self.id))

    @property
    def manifest_url(self) -> str:
        return storage.join(self.url, "manifest")

    @property
    def inputs_url(self) -> str:
        return storage.join(self.url, "inputs")

    @property
    def result_name(self) -> str:
        return f"result.{self.format}"

    @property
    def result_url(self) -> str:
        return storage.join(self.url, self.result_name)

    def as_json(self) -> responses.Batch:
        return {
            "id": self.id,
            "model": self.model_id,
            "dataset": self.dataset_id,
            "manifest": self.manifest_name,
            "format": self.format,
            "k": self.k,
            "status": self.status.value,
            "rows": self.rows,
            "predicted": self.predicted,
            "bad_rows": self.bad_rows,
            "error": self.error,
            "result": self.result,
            "volumes": responses.mounted(self.volumes),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def check_options(k: int, fmt: str) -> None:
    """k and format, checked before anything is written."""
    if k < 1 or k > MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}, not {k}")
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def _batch(tenant: str, row: Any) -> Batch:
    m = row._mapping
    return Batch(
        m["id"],
        tenant,
        m["model_id"],
        m["dataset_id"],
        m["manifest_name"],
        m["format"],
        m["k"],
        BatchStatus(m["status"]),
        m["rows"],
        m["predicted"],
        m["bad_rows"],
        m["error"],
        m["result"],
        m["created_at"],
        m["updated_at"],
        tuple(json.loads(m["volumes"]) if m["volumes"] else ()),
    )


def create(
    store: Store,
    tenant: str,
    model_id: int,
    k: int,
    fmt: str,
    rows: int,
    dataset_id: int | None = None,
    manifest_name: str | None = None,
    volumes: list[dict[str, Any]] | None = None,
) -> Batch:
    """A new batch: Queued over a dataset, Uploading over a manifest."""
    check_options(k, fmt)
    if (dataset_id is None) == (manifest_name is None):
        raise InvalidInput("a batch predicts over a dataset or a manifest: give exactly one")
    tenant_id = accounts.get_tenant(store, tenant).id
    status = BatchStatus.QUEUED if dataset_id is not None else BatchStatus.UPLOADING
    now = utcnow()
    with store.write() as conn:
        new_id = conn.execute(
            insert(batch_predictions).values(
                tenant_id=tenant_id,
                model_id=model_id,
                dataset_id=dataset_id,
                manifest_name=manifest_name,
                format=fmt,
                k=k,
                status=status.value,
                rows=rows,
                predicted=0,
                bad_rows=0,
                volumes=json.dumps(volumes) if volumes else None,
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
    return get(store, tenant, int(new_id))


def get(store: Store, tenant: str, batch_id: int) -> Batch:
    """A batch of this tenant; another tenant's id is 'not found', exactly like a missing one."""
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.read() as conn:
        row = conn.execute(
            select(batch_predictions).where(
                (batch_predictions.c.id == batch_id) & (batch_predictions.c.tenant_id == tenant_id)
            )
        ).first()
    if row is None:
        raise NotFound(f"no batch prediction {batch_id} in tenant {tenant!r}")
    return _batch(tenant, row)


def list_all(store: Store, tenant: str) -> list[Batch]:
    """The tenant's batches, newest first."""
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.read() as conn:
        rows = conn.execute(
            select(batch_predictions)
            .where(batch_predictions.c.tenant_id == tenant_id)
            .order_by(batch_predictions.c.id.desc())
        ).all()
    return [_batch(tenant, r) for r in rows]


def in_status(store: Store, statuses: set[BatchStatus]) -> list[tuple[str, int]]:
    """(tenant, id) of every batch in these statuses, across tenants (for the controller)."""
    with store.read() as conn:
        rows = conn.execute(
            select(accounts.tenants.c.name, batch_predictions.c.id)
            .join(accounts.tenants, accounts.tenants.c.id == batch_predictions.c.tenant_id)
            .where(batch_predictions.c.status.in_([s.value for s in statuses]))
        ).all()
    return [(r[0], int(r[1])) for r in rows]


def move(store: Store, tenant: str, batch_id: int, to: BatchStatus, **values: Any) -> Batch:
    """Change status (checked against TRANSITIONS in the same write) and other columns."""
    tenant_id = accounts.get_tenant(store, tenant).id
    transitions.move(
        store,
        batch_predictions,
        (batch_predictions.c.id == batch_id) & (batch_predictions.c.tenant_id == tenant_id),
        TRANSITIONS,
        to,
        {"updated_at": utcnow(), **values},
        what=f"batch prediction {batch_id}",
        status_now=lambda: get(store, tenant, batch_id).status,
        may_stay=True,
    )
    return get(store, tenant, batch_id)


def progress(store: Store, batch_id: int, predicted: int, bad_rows: int) -> None:
    """Rows done so far, while Running."""
    with store.write() as conn:
        conn.execute(
            update(batch_predictions)
            .where(batch_predictions.c.id == batch_id)
            .values(predicted=predicted, bad_rows=bad_rows, updated_at=utcnow())
        )
