"""The store's schema, created and upgraded by Alembic: one revision per step in versions/.

`upgrade(store)` brings any store to the newest revision in one write transaction (DDL is
transactional on PostgreSQL and SQLite): a new database gets every step, an older one the
steps it lacks. A store from before Alembic recorded its version in `ncloud_schema`; it is
stamped at that revision first, then upgraded like any other, and that table dropped.

A new step is a new file in versions/, `NNNN_what.py`, whose `down_revision` is the last
one's, and SCHEMA_VERSION (cluster/core/store.py) bumped to NNNN. Revision ids are the
numbers (0001, 0002, ...), so a store's version reads as an int.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, inspect

from cluster.core.store import LEGACY_SCHEMA_TABLE, SCHEMA_VERSION, Store, revision_id

HERE = Path(__file__).resolve().parent


def _config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = conn
    return cfg


def upgrade(store: Store) -> None:
    """Bring the store to SCHEMA_VERSION (nothing to do when it is there)."""
    found = store.version()
    if found > SCHEMA_VERSION:
        store.check()  # newer than this ncloud: says to upgrade ncloud
    with store.write() as conn:
        cfg = _config(conn)
        if inspect(conn).has_table(LEGACY_SCHEMA_TABLE) and found:
            command.stamp(cfg, revision_id(found))
            conn.exec_driver_sql(f"DROP TABLE {LEGACY_SCHEMA_TABLE}")
        command.upgrade(cfg, revision_id(SCHEMA_VERSION))
