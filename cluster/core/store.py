"""The metadata store: one SQLAlchemy engine, short explicit transactions, a schema version.

SQLite (the default) runs in WAL mode with a busy timeout, and write transactions
begin IMMEDIATE so that two writers never deadlock on a lock upgrade. Any
SQLAlchemy URL (PostgreSQL on a cluster) works through NCLOUD_DB_URL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from ncloud.errors import SchemaMismatch, Unavailable

metadata = MetaData()

# Bump when a table changes: cluster/control/migrations/versions/ holds the Alembic
# revision from N-1 to N, whose id is N as four digits (revision_id).
SCHEMA_VERSION = 12

# Where Alembic records a store's revision, and where stores before Alembic kept theirs.
ALEMBIC_TABLE = Table("alembic_version", MetaData(), Column("version_num", String(32)))
LEGACY_SCHEMA_TABLE = "ncloud_schema"
_legacy = Table(LEGACY_SCHEMA_TABLE, MetaData(), Column("version", Integer))


def revision_id(version: int) -> str:
    return f"{version:04d}"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Take transaction control away from the driver so that "begin" below decides.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("ncloud_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class Store:
    """The one handle on the database; subsystem modules take it as their first argument."""

    def __init__(self, url: str) -> None:
        self.url = url
        if make_url(url).get_backend_name() == "sqlite":
            self.engine = _sqlite_engine(url)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._reachable(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A short write transaction; commits on success, rolls back on any error."""
        with self._reachable(), self.engine.connect() as raw:
            conn = raw.execution_options(ncloud_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """A store that cannot be reached or refuses us (down, wrong password, locked) is a
        503 that names it, password hidden; the transaction was rolled back, so retry."""
        try:
            yield
        except (OperationalError, InterfaceError) as exc:
            reason = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
            raise Unavailable(
                f"the store at {self.safe_url} cannot be used now: "
                f"{reason[0] if reason else type(exc).__name__}"
            ) from exc

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def version(self) -> int:
        """The schema version recorded in the database (Alembic's revision, or before
        Alembic our own record); 0 for an empty database."""
        with self.read() as conn:
            has = self.engine.dialect.has_table
            if has(conn, ALEMBIC_TABLE.name):
                found = conn.execute(select(ALEMBIC_TABLE.c.version_num)).scalar()
                return int(found) if found and found.isdigit() else 0
            if has(conn, _legacy.name):
                return int(conn.execute(select(_legacy.c.version)).scalar() or 0)
            return 0

    def check(self) -> None:
        """Refuse to work on a store of another schema version, saying what to do."""
        found = self.version()
        if found == SCHEMA_VERSION:
            return
        if found > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"the store at {self.safe_url} has schema version {found}, newer than this "
                f"ncloud knows ({SCHEMA_VERSION}): upgrade ncloud (pip install -U ncloud)"
            )
        raise SchemaMismatch(
            f"the store at {self.safe_url} has schema version {found}, older than this "
            f"ncloud needs ({SCHEMA_VERSION}): run `ncloud server start` once to upgrade it"
        )

    def dispose(self) -> None:
        self.engine.dispose()


def open_store(url: str) -> Store:
    """Open a store of this schema version (cluster/control/schema.py creates or upgrades it)."""
    store = Store(url)
    try:
        store.check()
    except BaseException:
        store.dispose()
        raise
    return store
