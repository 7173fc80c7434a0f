"""Run a dataset's ingest as Ray tasks inside the tenant's reservation (for the controller)."""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.util.placement_group import get_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.core import accounts, storage
from cluster.core.store import Store
from jobs.datasets import ingest
from jobs.datasets import state as datasets
from jobs.datasets.state import DatasetStatus
from ncloud.manifest import read_manifest
from ncloud.settings import settings

log = logging.getLogger("ncloud.ingest")
PART_TIMEOUT_S = 3600.0


@ray.remote(num_cpus=1, max_retries=1)
def _ingest_part(p: ingest.Plan, part_no: int, ds_url: str, max_file_bytes: int) -> Any:
    return ingest.ingest_part(p, part_no, ds_url, max_file_bytes)


def _cause(exc: BaseException) -> BaseException:
    """The user-level exception inside a Ray task error."""
    return getattr(exc, "cause", None) or exc


def run(store: Store, tenant: str, dataset_id: int) -> None:
    """Ingest one dataset to Ready, or leave it in Error with the reason; never raises."""
    try:
        ds = datasets.get(store, tenant, dataset_id)
        storage.remove_tree(storage.join(ds.url, "shards"))
        storage.remove_tree(storage.join(ds.url, "index.json"))
        manifest = read_manifest(ds.manifest_url, root=ds.raw_url)
        p = ingest.plan(manifest)
        datasets.progress(store, dataset_id, 0, len(p.parts))
        group = get_placement_group(accounts.get_tenant(store, tenant).placement_group)
        task: Any = _ingest_part.options(  # type: ignore[attr-defined]
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=group)
        )
        plan_ref = ray.put(p)
        pending = [
            task.remote(plan_ref, i, ds.url, settings().max_file_bytes) for i in range(len(p.parts))
        ]
        results: list[ingest.PartResult] = []
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=PART_TIMEOUT_S)
            if not ready:
                raise TimeoutError(f"no ingest part finished within {PART_TIMEOUT_S:g}s")
            results.extend(ray.get(ready))
            datasets.progress(store, dataset_id, len(results), len(p.parts))
        index = ingest.finish(p, ds.url, results)
        datasets.move(
            store,
            tenant,
            dataset_id,
            DatasetStatus.READY,
            rows=index.rows,
            error=None,
            info={
                "kind": index.kind,
                "classes": index.classes,
                "class_counts": {str(k): v for k, v in index.class_counts.items()},
                "shape": list(index.shape) if index.shape else None,
                "bytes": index.bytes,
                "shards": len(index.shards),
            },
        )
        log.info("dataset %s of %s ingested: %d rows", dataset_id, tenant, index.rows)
    except Exception as exc:
        reason = ingest.describe_failure(_cause(exc))
        log.warning("dataset %s of %s failed to ingest: %s", dataset_id, tenant, reason)
        try:
            datasets.move(store, tenant, dataset_id, DatasetStatus.ERROR, error=reason)
        except Exception:
            log.exception("could not record the failure of dataset %s", dataset_id)
