"""Every table of the store, the steps that upgrade it, and the order a tenant's rows go in.

The table modules sit in the concepts that own them (cluster/core/accounts.py, jobs/*/state.py,
jobs/models/metrics.py, jobs/models/deployments.py); this module is the one place that knows
them all, so the store below them imports none.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Table, inspect, text

from cluster.control import lease  # noqa: F401  (its table is in metadata)
from cluster.core import accounts
from cluster.core.store import SCHEMA_VERSION, Store, metadata
from jobs.batches.state import batch_predictions
from jobs.datasets.state import datasets
from jobs.models import metrics
from jobs.models.deployments import deployments
from jobs.models.state import models, runs
from jobs.volumes.state import volumes

# Rows that belong to a tenant, in the order they are deleted: what points at a model first.
TENANT_TABLES: tuple[Table, ...] = (
    batch_predictions,
    deployments,
    metrics.epoch_metrics,
    metrics.log_lines,
    runs,
    models,
    datasets,
    volumes,
)


def _create_missing_tables(conn: Connection) -> None:
    metadata.create_all(conn)


def _add_deployment_batching(conn: Connection) -> None:
    """Deployments keep their batching options (max batch, batch wait, queue limit)."""
    _create_missing_tables(conn)  # a new store already has the column
    found = inspect(conn)
    if found.has_table("deployments") and "batching" not in {
        c["name"] for c in found.get_columns("deployments")
    }:
        conn.execute(text("ALTER TABLE deployments ADD COLUMN batching TEXT"))


def _add_batch_volumes(conn: Connection) -> None:
    """Batch predictions keep the volumes their network reads."""
    _create_missing_tables(conn)
    found = inspect(conn)
    if found.has_table("batch_predictions") and "volumes" not in {
        c["name"] for c in found.get_columns("batch_predictions")
    }:
        conn.execute(text("ALTER TABLE batch_predictions ADD COLUMN volumes TEXT"))


# Sizes and counts that outgrow 32 bits (a 4 GiB tenant; rows of a large dataset).
WIDENED = {
    "tenants": ("memory",),
    "volumes": ("files",),
    "datasets": ("rows", "files", "progress_done", "progress_total"),
    "batch_predictions": ("rows", "predicted", "bad_rows"),
}


def _widen_counts(conn: Connection) -> None:
    """64-bit sizes and counts. SQLite's INTEGER is 64-bit already; PostgreSQL's is not."""
    _create_missing_tables(conn)
    if conn.dialect.name != "postgresql":
        return
    found = inspect(conn)
    for table, columns in WIDENED.items():
        if found.has_table(table):
            for column in columns:
                conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT"))


# version -> the step that upgrades a store at version-1 to version.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _create_missing_tables,
    2: _create_missing_tables,  # datasets and volumes
    3: _create_missing_tables,  # models, runs, epoch metrics, log lines
    4: _create_missing_tables,  # deployments, batch predictions
    5: _add_deployment_batching,
    6: _add_batch_volumes,
    7: _widen_counts,
    8: _create_missing_tables,  # the control plane's lease
}


def open_store(url: str) -> Store:
    """Create or upgrade the store, then open it (the server's start does this)."""
    store = Store(url)
    try:
        store.migrate(MIGRATIONS)
        store.check()
    except BaseException:
        store.dispose()  # its pooled connections, not left to the garbage collector
        raise
    return store


def delete_tenant(store: Store, name: str, force: bool) -> accounts.Tenant:
    """Remove a tenant's rows from every table; without force, only a tenant that owns none."""
    return accounts.delete_tenant(store, name, force, TENANT_TABLES)


assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1)), "a schema step is missing"
assert set(metadata.tables) >= {t.name for t in TENANT_TABLES}
