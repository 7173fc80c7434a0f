"""The SQL store: WAL mode, immediate write transactions, schema versions that say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from cluster.control import schema
from cluster.core import store as store_mod
from cluster.core.store import SCHEMA_VERSION, open_store, revision_id
from ncloud.errors import SchemaMismatch


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = schema.open_store(f"sqlite:///{tmp_path / 'wal.db'}")
    try:
        with store.read() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    finally:
        store.dispose()


def test_failed_write_rolls_back(store: store_mod.Store) -> None:
    from cluster.core import accounts

    with pytest.raises(RuntimeError), store.write() as conn:
        conn.execute(
            accounts.tenants.insert().values(
                name="t", cpus=1, gpus=0, memory=0, generation=1, created_at=store_mod.utcnow()
            )
        )
        raise RuntimeError("boom")
    assert accounts.list_tenants(store) == []


def _set_version(store: store_mod.Store, version: int) -> None:
    """Record the store as being at `version` (Alembic's table), as if it stopped there."""
    with store.write() as conn:
        found = {"v": revision_id(version)}
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), found)


def test_newer_store_says_upgrade_ncloud(store: store_mod.Store) -> None:
    _set_version(store, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaMismatch, match="upgrade ncloud"):
        open_store(store.url)
    with pytest.raises(SchemaMismatch, match="newer"):
        schema.open_store(store.url)


def test_older_store_says_run_server_start_and_migrates(store: store_mod.Store) -> None:
    _set_version(store, SCHEMA_VERSION - 1)
    with pytest.raises(SchemaMismatch, match="ncloud server start"):
        open_store(store.url)
    _version_then_dispose(schema.open_store(store.url))


def _version_then_dispose(s: store_mod.Store) -> None:
    try:
        assert s.version() == SCHEMA_VERSION
    finally:
        s.dispose()


def test_empty_database_is_created(tmp_path: Path) -> None:
    _version_then_dispose(schema.open_store(f"sqlite:///{tmp_path / 'deep' / 'new.db'}"))


@pytest.mark.parametrize(
    ("version", "table", "column"),
    [(4, "deployments", "batching"), (5, "batch_predictions", "volumes")],
)
def test_an_older_store_gains_the_column_of_the_next_version(
    store: store_mod.Store, version: int, table: str, column: str
) -> None:
    with store.write() as conn:
        conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    _set_version(store, version)
    upgraded = schema.open_store(store.url)
    try:
        assert upgraded.version() == SCHEMA_VERSION
        with upgraded.read() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns(table)}
        assert column in columns
    finally:
        upgraded.dispose()


def test_a_deployment_without_batching_options_gets_the_defaults() -> None:
    from jobs.models import deployments

    assert deployments.Batching.from_json(None) == deployments.Batching()


def test_the_revisions_are_numbered_and_chained_up_to_the_schema_version() -> None:
    from alembic.script import ScriptDirectory

    from cluster.control import migrations

    found = ScriptDirectory(str(migrations.HERE))
    chain = [r.revision for r in reversed(list(found.walk_revisions()))]
    assert chain == [revision_id(v) for v in range(1, SCHEMA_VERSION + 1)]
    assert found.get_heads() == [revision_id(SCHEMA_VERSION)]


def test_a_store_from_before_alembic_is_upgraded_and_keeps_its_rows(
    store: store_mod.Store,
) -> None:
    """A store that recorded version 6 in ncloud_schema (before Alembic, and before the
    64-bit counts of step 7 and the lease of step 8): stamped at 0006, upgraded, its
    rows kept, its own version table gone."""
    from cluster.core import accounts

    accounts.create_tenant(store, "kept", 1, 0, 2**20)
    with store.write() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("DROP TABLE control_lease"))
        conn.execute(text("CREATE TABLE ncloud_schema (id INTEGER PRIMARY KEY, version INTEGER)"))
        conn.execute(text("INSERT INTO ncloud_schema (id, version) VALUES (1, 6)"))
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE tenants ALTER COLUMN memory TYPE INTEGER"))
    assert store.version() == 6
    upgraded = schema.open_store(store.url)
    try:
        assert upgraded.version() == SCHEMA_VERSION
        with upgraded.read() as conn:
            found = inspect(conn)
            assert not found.has_table("ncloud_schema") and found.has_table("control_lease")
            memory = {c["name"]: c for c in found.get_columns("tenants")}["memory"]
        assert "BIGINT" in str(memory["type"]).upper() or conn.dialect.name == "sqlite"
        accounts.create_tenant(upgraded, "big", 1, 0, 5 * 2**30)  # over 32 bits
        assert accounts.get_tenant(upgraded, "kept").memory == 2**20
        assert accounts.get_tenant(upgraded, "big").memory == 5 * 2**30
    finally:
        upgraded.dispose()
