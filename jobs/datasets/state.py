"""The tenant's datasets: the table, the status machine, and where each dataset's files live.

Uploaded: ``Uploading -> Ingesting -> Ready`` (or ``Error`` with the first bad rows; a
retry goes ``Error -> Ingesting``). Linked (s3://): ``Linked``; nothing is copied, and the
first training that reads it ingests it into the node-local cache.
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
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from cluster.core import accounts, storage, transitions
from cluster.core.store import Store, metadata, utcnow
from ncloud import responses
from ncloud.errors import Conflict, NotFound
from ncloud.validation import check_name


class DatasetStatus(StrEnum):
    UPLOADING = "Uploading"
    INGESTING = "Ingesting"
    READY = "Ready"
    LINKED = "Linked"
    ERROR = "Error"

    def is_terminal(self) -> bool:
        return self in (DatasetStatus.READY, DatasetStatus.LINKED)


# Which status may follow which; anything else is a Conflict.
TRANSITIONS = {
    DatasetStatus.UPLOADING: {DatasetStatus.INGESTING, DatasetStatus.ERROR},
    DatasetStatus.INGESTING: {DatasetStatus.READY, DatasetStatus.ERROR},
    DatasetStatus.ERROR: {DatasetStatus.INGESTING, DatasetStatus.UPLOADING},
    DatasetStatus.READY: set(),
    DatasetStatus.LINKED: set(),
}

datasets = Table(
    "datasets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("source", String(8), nullable=False),  # upload | link
    Column("status", String(16), nullable=False),
    Column("manifest_name", String(255), nullable=False),
    Column("link_url", Text),  # the manifest's URL, for linked datasets
    Column("rows", BigInteger, nullable=False, default=0),
    Column("files", BigInteger, nullable=False, default=0),
    Column("info", Text),  # JSON: kind, classes, class_counts, shape, bytes, shards
    Column("progress_done", BigInteger, nullable=False, default=0),
    Column("progress_total", BigInteger, nullable=False, default=0),
    Column("error", Text),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    UniqueConstraint("tenant_id", "name"),
    sqlite_autoincrement=True,  # its storage prefix and shards are named after the id
)


@dataclass(frozen=True)
class Dataset:
    id: int
    tenant: str
    name: str
    source: str
    status: DatasetStatus
    manifest_name: str
    link_url: str | None
    rows: int
    files: int
    info: dict[str, Any]
    progress_done: int
    progress_total: int
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def url(self) -> str:
        """This dataset's folder in storage: raw/ (as uploaded), shards/ and index.json."""
        return storage.tenant_url(self.tenant, "datasets", str(self.id))

    @property
    def raw_url(self) -> str:
        return storage.join(self.url, "raw")

    @property
    def manifest_url(self) -> str:
        if self.link_url:
            return self.link_url
        return storage.join(self.raw_url, self.manifest_name)

    def as_json(self) -> responses.Dataset:
        status = self.status.value
        if self.status is DatasetStatus.INGESTING and self.progress_total:
            status = f"Ingesting {self.progress_done}/{self.progress_total}"
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "status": status,
            "rows": self.rows,
            "files": self.files,
            "link": self.link_url,
            "kind": self.info.get("kind"),
            "classes": self.info.get("classes"),
            "class_counts": self.info.get("class_counts"),
            "shape": self.info.get("shape"),
            "bytes": self.info.get("bytes"),
            "shards": self.info.get("shards"),
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _dataset(tenant: str, row: Any) -> Dataset:
    m = row._mapping
    return Dataset(
        m["id"],
        tenant,
        m["name"],
        m["source"],
        DatasetStatus(m["status"]),
        m["manifest_name"],
        m["link_url"],
        m["rows"],
        m["files"],
        json.loads(m["info"] or "{}"),
        m["progress_done"],
        m["progress_total"],
        m["error"],
        m["created_at"],
        m["updated_at"],
    )


def create(
    store: Store,
    tenant: str,
    name: str,
    source: str,
    manifest_name: str,
    rows: int,
    files: int,
    link_url: str | None = None,
) -> Dataset:
    check_name(name, "dataset name")
    tenant_id = accounts.get_tenant(store, tenant).id
    status = DatasetStatus.LINKED if source == "link" else DatasetStatus.UPLOADING
    now = utcnow()
    try:
        with store.write() as conn:
            new_id = conn.execute(
                insert(datasets).values(
                    tenant_id=tenant_id,
                    name=name,
                    source=source,
                    status=status.value,
                    manifest_name=manifest_name,
                    link_url=link_url,
                    rows=rows,
                    files=files,
                    info="{}",
                    progress_done=0,
                    progress_total=0,
                    created_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
    except IntegrityError as exc:
        raise Conflict(f"tenant {tenant!r} already has a dataset named {name!r}") from exc
    return get(store, tenant, int(new_id))


def get(store: Store, tenant: str, dataset_id: int) -> Dataset:
    """A dataset of this tenant; another tenant's id is 'not found', exactly like a missing one."""
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.read() as conn:
        row = conn.execute(
            select(datasets).where(
                (datasets.c.id == dataset_id) & (datasets.c.tenant_id == tenant_id)
            )
        ).first()
    if row is None:
        raise NotFound(f"no dataset {dataset_id} in tenant {tenant!r}")
    return _dataset(tenant, row)


def find(store: Store, tenant: str, name: str) -> Dataset | None:
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.read() as conn:
        row = conn.execute(
            select(datasets).where((datasets.c.name == name) & (datasets.c.tenant_id == tenant_id))
        ).first()
    return _dataset(tenant, row) if row is not None else None


def list_all(store: Store, tenant: str) -> list[Dataset]:
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.read() as conn:
        rows = conn.execute(
            select(datasets).where(datasets.c.tenant_id == tenant_id).order_by(datasets.c.id.desc())
        ).all()
    return [_dataset(tenant, r) for r in rows]


def in_status(store: Store, status: DatasetStatus) -> list[tuple[str, int]]:
    """(tenant, id) of every dataset in a status, across tenants (for the controller)."""
    with store.read() as conn:
        rows = conn.execute(
            select(accounts.tenants.c.name, datasets.c.id)
            .join(accounts.tenants, accounts.tenants.c.id == datasets.c.tenant_id)
            .where(datasets.c.status == status.value)
        ).all()
    return [(r[0], int(r[1])) for r in rows]


def move(store: Store, tenant: str, dataset_id: int, to: DatasetStatus, **values: Any) -> Dataset:
    """Change status (checked against TRANSITIONS in the same write) and other columns."""
    if "info" in values:
        values["info"] = json.dumps(values["info"])
    tenant_id = accounts.get_tenant(store, tenant).id
    transitions.move(
        store,
        datasets,
        (datasets.c.id == dataset_id) & (datasets.c.tenant_id == tenant_id),
        TRANSITIONS,
        to,
        {"updated_at": utcnow(), **values},
        what=f"dataset {dataset_id}",
        status_now=lambda: get(store, tenant, dataset_id).status,
        may_stay=True,
    )
    return get(store, tenant, dataset_id)


def progress(store: Store, dataset_id: int, done: int, total: int) -> None:
    with store.write() as conn:
        conn.execute(
            update(datasets)
            .where(datasets.c.id == dataset_id)
            .values(progress_done=done, progress_total=total)
        )


def remove(store: Store, tenant: str, dataset_id: int) -> Dataset:
    found = get(store, tenant, dataset_id)
    if found.status is DatasetStatus.INGESTING:
        raise Conflict(f"dataset {dataset_id} is ingesting; remove it when it is Ready or Error")
    with store.write() as conn:
        conn.execute(delete(datasets).where(datasets.c.id == dataset_id))
    if found.source == "upload":
        storage.remove_tree(found.url)
    return found
