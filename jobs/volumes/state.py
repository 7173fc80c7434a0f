"""The tenant's volumes: the table and the only code that writes it.

A volume is a named folder of extra files (vocabularies, tables) that training mounts at
`/data`. Its files live under `tenant_url(tenant, "volumes", id)`; the row keeps the name
and the file count and bytes, recounted from storage after every change.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from cluster.core import accounts, storage
from cluster.core.store import Store, metadata, utcnow
from ncloud.errors import Conflict, InvalidInput, NotFound
from ncloud.settings import settings
from ncloud.validation import check_name

volumes = Table(
    "volumes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("files", BigInteger, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_volumes_tenant_name"),
    # Never reuse the id of a removed volume: its storage prefix is named after the id.
    sqlite_autoincrement=True,
)


# Longest relative path and path segment a volume file may have (most filesystems: 255).
MAX_PATH_CHARS = 1024
MAX_SEGMENT_CHARS = 255


@dataclass(frozen=True)
class Volume:
    id: int
    tenant: str
    name: str
    files: int
    bytes: int
    created_at: dt.datetime
    updated_at: dt.datetime


def _volume(tenant: str, row: object) -> Volume:
    m = row._mapping  # type: ignore[attr-defined]
    return Volume(
        m["id"], tenant, m["name"], m["files"], m["bytes"], m["created_at"], m["updated_at"]
    )


def volume_url(tenant: str, volume_id: int) -> str:
    """Where a volume's files live; ncloud-made names only."""
    return storage.tenant_url(tenant, "volumes", str(volume_id))


def file_name(relative: str) -> str:
    """The canonical relative name of a file inside a volume; refuses escapes and odd names."""
    if not relative or not relative.strip():
        raise InvalidInput("volume file path is empty; give a path relative to the volume root")
    try:
        name = storage.relative_name(relative, "path")
    except InvalidInput as exc:
        # storage speaks of folders and manifests; say it in the volume's words.
        reason = str(exc).split("; ")[0].replace("its folder", "the volume")
        reason = reason.replace("the manifest root", "the volume")
        raise InvalidInput(f"volume file {reason}; use a path relative to the volume root") from exc
    if len(name) > MAX_PATH_CHARS or any(len(p) > MAX_SEGMENT_CHARS for p in name.split("/")):
        raise InvalidInput(
            f"volume file path {relative[:80]!r}... is too long: at most {MAX_PATH_CHARS} "
            f"characters, {MAX_SEGMENT_CHARS} per folder or file name"
        )
    if ".part-" in name:
        # storage.write_stream's temporary files carry that marker; listing hides them.
        raise InvalidInput(f"volume file path {relative!r} contains '.part-', which is reserved")
    return name


def _tenant_id(store: Store, tenant: str) -> int:
    return accounts.get_tenant(store, tenant).id


def _row(conn: Connection, tenant_id: int, volume_id: int, lock: bool = False) -> object:
    query = select(volumes).where((volumes.c.id == volume_id) & (volumes.c.tenant_id == tenant_id))
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        # Another tenant's volume reads exactly like a missing one.
        raise NotFound(f"no volume {volume_id}")
    return row


# -- volumes ---------------------------------------------------------------------------------


def create_volume(store: Store, tenant: str, name: str) -> Volume:
    check_name(name, "volume name")
    tenant_id = _tenant_id(store, tenant)
    now = utcnow()
    try:
        with store.write() as conn:
            inserted = conn.execute(
                insert(volumes).values(
                    tenant_id=tenant_id, name=name, files=0, bytes=0, created_at=now, updated_at=now
                )
            )
            volume_id = int(inserted.inserted_primary_key[0])  # type: ignore[index]
    except IntegrityError as exc:
        raise Conflict(
            f"volume {name!r} exists already in tenant {tenant!r}: pick another name "
            "or add files to it with `ncloud volume upload DIR -i ID`"
        ) from exc
    # A new id never had files; clear the prefix anyway in case storage outlived a store.
    storage.remove_tree(volume_url(tenant, volume_id))
    return get_volume(store, tenant, volume_id)


def get_volume(store: Store, tenant: str, volume_id: int) -> Volume:
    tenant_id = _tenant_id(store, tenant)
    with store.read() as conn:
        return _volume(tenant, _row(conn, tenant_id, volume_id))


def list_volumes(store: Store, tenant: str) -> list[Volume]:
    tenant_id = _tenant_id(store, tenant)
    with store.read() as conn:
        rows = conn.execute(
            select(volumes).where(volumes.c.tenant_id == tenant_id).order_by(volumes.c.id)
        ).all()
    return [_volume(tenant, r) for r in rows]


def delete_volume(store: Store, tenant: str, volume_id: int) -> Volume:
    """Remove the row, then the files: once the row is gone nothing can reach them."""
    tenant_id = _tenant_id(store, tenant)
    with store.write() as conn:
        found = _volume(tenant, _row(conn, tenant_id, volume_id, lock=True))
        conn.execute(delete(volumes).where(volumes.c.id == volume_id))
    storage.remove_tree(volume_url(tenant, volume_id))
    return found


# -- files -----------------------------------------------------------------------------------


def list_volume_files(store: Store, tenant: str, volume_id: int) -> dict[str, int]:
    """Relative path -> bytes of every file in the volume, sorted by path."""
    get_volume(store, tenant, volume_id)
    return dict(sorted(storage.list_files(volume_url(tenant, volume_id)).items()))


def file_url(
    store: Store, tenant: str, volume_id: int, relative: str, volume_checked: bool = False
) -> tuple[str, str]:
    """(canonical name, storage URL) for a file about to be written; checks before any byte.

    Refuses a path that runs through an existing file (`a` then `a/b`) or names an existing
    folder, which storage could not hold side by side. `volume_checked`: the caller has
    looked the volume up in this tenant already (once for an archive of many files).
    """
    name = file_name(relative)
    if not volume_checked:
        get_volume(store, tenant, volume_id)
    base = volume_url(tenant, volume_id)
    fs, _ = storage.filesystem(base)
    parts = name.split("/")
    for depth in range(1, len(parts)):
        parent = "/".join(parts[:depth])
        if fs.isfile(storage.filesystem(storage.join(base, parent))[1]):
            raise Conflict(
                f"volume {volume_id} has a file {parent!r}, so {name!r} cannot go under it: "
                f"remove {parent!r} first"
            )
    url = storage.join(base, name)
    if fs.isdir(storage.filesystem(url)[1]):
        raise Conflict(f"volume {volume_id} has a folder {name!r}; a file cannot replace it")
    return name, url


def record_file(store: Store, tenant: str, volume_id: int, name: str) -> Volume:
    """Recount a volume after `name` was written or removed.

    The row is locked while storage is listed so that parallel uploads into one volume
    cannot write counts out of order. If the volume went away meanwhile, so does the file.
    """
    return recount(store, tenant, volume_id, name)


def recount(store: Store, tenant: str, volume_id: int, name: str = "") -> Volume:
    """Recount a volume after files were written (`name`: the one to remove with it if the
    volume went away meanwhile; all of its files when empty)."""
    tenant_id = _tenant_id(store, tenant)
    base = volume_url(tenant, volume_id)
    try:
        with store.write() as conn:
            _row(conn, tenant_id, volume_id, lock=True)
            found = storage.list_files(base)
            conn.execute(
                update(volumes)
                .where(volumes.c.id == volume_id)
                .values(files=len(found), bytes=sum(found.values()), updated_at=utcnow())
            )
    except NotFound:
        storage.remove_tree(storage.join(base, name))
        raise
    return get_volume(store, tenant, volume_id)


def put_file(
    store: Store,
    tenant: str,
    volume_id: int,
    relative: str,
    chunks: Iterable[bytes],
    max_bytes: int | None = None,
) -> Volume:
    """Add or replace one file; over max_bytes (NCLOUD_MAX_FILE_BYTES) nothing is left behind."""
    name, url = file_url(store, tenant, volume_id, relative)
    limit = settings().max_file_bytes if max_bytes is None else max_bytes
    storage.write_stream(url, chunks, limit)
    return record_file(store, tenant, volume_id, name)


def open_file(
    store: Store, tenant: str, volume_id: int, relative: str
) -> tuple[int, Iterator[bytes]]:
    """(size, chunks) of one file; NotFound before the first byte when it is not there."""
    name = file_name(relative)
    get_volume(store, tenant, volume_id)
    url = storage.join(volume_url(tenant, volume_id), name)
    return storage.open_file(url, f"no file {name!r} in volume {volume_id}")


def remove_file(store: Store, tenant: str, volume_id: int, relative: str) -> Volume:
    name = file_name(relative)
    get_volume(store, tenant, volume_id)
    url = storage.join(volume_url(tenant, volume_id), name)
    fs, path = storage.filesystem(url)
    if not fs.isfile(path):
        raise NotFound(f"no file {name!r} in volume {volume_id}")
    fs.rm(path)
    return record_file(store, tenant, volume_id, name)
