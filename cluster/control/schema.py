"""Every table of the store, opening it created or upgraded (by cluster.control.migrations),
and the order a tenant's rows go in.

The table modules sit in the concepts that own them (cluster/core/accounts.py, jobs/*/state.py,
jobs/models/metrics.py, jobs/models/deployments.py); this module is the one place that knows
them all, so the store below them imports none.
"""

from __future__ import annotations

from sqlalchemy import Table

from cluster.control import lease, migrations  # noqa: F401  (lease: its table is in metadata)
from cluster.core import accounts, audit, usage  # noqa: F401  (audit: its table is in metadata)
from cluster.core.store import Store, metadata
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


def open_store(url: str) -> Store:
    """Create or upgrade the store, then open it (the server's start does this)."""
    store = Store(url)
    try:
        migrations.upgrade(store)
        store.check()
    except BaseException:
        store.dispose()  # its pooled connections, not left to the garbage collector
        raise
    return store


def delete_tenant(store: Store, name: str, force: bool) -> accounts.Tenant:
    """Remove a tenant's rows from every table; without force, only a tenant that owns none."""
    removed = accounts.delete_tenant(store, name, force, TENANT_TABLES)
    usage.forget_tenant(store, removed.id)  # its accounting goes with it (no key holds it)
    return removed


assert set(metadata.tables) >= {t.name for t in TENANT_TABLES}
