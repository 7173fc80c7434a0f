"""Removing a model: its runs, metrics, log lines, deployment record and files, together.

Its own module because it spans the model's tables (state, metrics, deployments), which
otherwise do not import each other's.
"""

from __future__ import annotations

from cluster.core import storage
from cluster.core.store import Store
from jobs.models import deployments, metrics
from jobs.models import state as models
from ncloud.errors import Conflict


def remove(store: Store, tenant: str, model_id: int) -> models.Model:
    """Remove a stopped or finished, undeployed model of this tenant's, with its files."""
    model = models.get(store, tenant, model_id)
    deployments.ensure_missing(store, tenant, model_id)
    run = models.latest_run(store, tenant, model_id)
    if not run.status.is_terminal():
        raise Conflict(f"model {model_id} is {run.status.value}: stop it first")
    with store.write() as conn:
        metrics.delete_for_model(conn, model_id)
        deployments.delete_for_model(conn, model_id)
        models.delete_for_model(conn, model_id)
    storage.remove_tree(model.url)
    return model
