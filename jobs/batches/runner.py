"""Run a batch prediction as Ray tasks inside the tenant's reservation (for the controller)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import ray
from ray.util.placement_group import get_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.core import accounts, storage
from cluster.core.store import Store
from jobs.batches import predict as batch_predict
from jobs.batches import results as batch_results
from jobs.batches import state as batches
from jobs.batches.predict import Job
from jobs.batches.results import Row
from jobs.batches.state import Batch, BatchStatus
from jobs.datasets import state as datasets
from jobs.datasets.shards import read_index
from jobs.models import predictor
from jobs.models import state as models
from jobs.models.checkpoints import NO_LIMIT
from ncloud.errors import NcloudError
from ncloud.manifest import parse_manifest
from ncloud.settings import settings

log = logging.getLogger("ncloud.batch")
SLICE_TIMEOUT_S = 3600.0

Slice = tuple[int, int | None]


@ray.remote(num_cpus=1, max_retries=1)
def _predict_slice(job: Job, first: int, end: int | None) -> list[Row]:
    return batch_predict.predict_slice(job, first, end)


def _cause(exc: BaseException) -> BaseException:
    """The user-level exception inside a Ray task error."""
    return getattr(exc, "cause", None) or exc


def describe_failure(exc: BaseException) -> str:
    """One line for a batch's Failed status."""
    if isinstance(exc, NcloudError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def plan(store: Store, batch: Batch) -> tuple[Job, list[Slice]]:
    """What every task needs, and the slices: whole shards of a dataset, or manifest rows."""
    model = models.get(store, batch.tenant, batch.model_id)
    job = Job(
        model.url,
        model.spec_name,
        model.spec_text,
        predictor.pinned_checkpoint(model.url),
        batch.k,
        accounts.get_tenant(store, batch.tenant).id,
        max_file_bytes=settings().max_file_bytes,
        tenant=batch.tenant,
        volumes=tuple(batch.mounts()),
    )
    if batch.dataset_id is None:
        manifest = parse_manifest(storage.read_bytes(batch.manifest_url), batch.inputs_url)
        job = dataclasses.replace(job, manifest=manifest)
        return job, list(batch_predict.row_slices(len(manifest.rows)))
    ds = datasets.get(store, batch.tenant, batch.dataset_id)
    if ds.link_url:  # its shards exist only in a node's cache: one task ingests and predicts
        return dataclasses.replace(job, link_url=ds.link_url), [(0, None)]
    index = read_index(ds.url)
    slices = batch_predict.dataset_slices([s.rows for s in index.shards])
    return dataclasses.replace(job, dataset_url=ds.url), list(slices)


def _predict(store: Store, batch: Batch, job: Job, slices: list[Slice]) -> list[Row]:
    """Every slice's rows, in slice order; progress is recorded as slices finish."""
    group = get_placement_group(accounts.get_tenant(store, batch.tenant).placement_group)
    task: Any = _predict_slice.options(  # type: ignore[attr-defined]
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=group)
    )
    job_ref = ray.put(job)
    pending = {task.remote(job_ref, first, end): i for i, (first, end) in enumerate(slices)}
    done: dict[int, list[Row]] = {}
    predicted = bad = 0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=SLICE_TIMEOUT_S)
            if not ready:
                raise TimeoutError(f"no slice finished within {SLICE_TIMEOUT_S:g}s")
            for ref in ready:
                rows = ray.get(ref)
                done[pending.pop(ref)] = rows
                failed = sum(1 for r in rows if r["error"])
                predicted, bad = predicted + len(rows) - failed, bad + failed
            batches.progress(store, batch.id, predicted, bad)
    finally:
        for ref in pending:  # a failed slice fails the batch: the others need not finish
            ray.cancel(ref)
    return [row for i in range(len(slices)) for row in done[i]]


def run(store: Store, tenant: str, batch_id: int) -> None:
    """Predict one batch to Completed, or leave it Failed with the reason; never raises."""
    try:
        batch = batches.move(
            store, tenant, batch_id, BatchStatus.RUNNING, predicted=0, bad_rows=0, error=None
        )
        job, slices = plan(store, batch)
        rows = _predict(store, batch, job, slices)
        storage.write_stream(batch.result_url, batch_results.encode(rows, batch.format), NO_LIMIT)
        bad = sum(1 for r in rows if r["error"])
        batches.move(
            store,
            tenant,
            batch_id,
            BatchStatus.COMPLETED,
            rows=len(rows),
            predicted=len(rows) - bad,
            bad_rows=bad,
            result=batch.result_name,
        )
        log.info("batch %s of %s: %d rows, %d bad", batch_id, tenant, len(rows), bad)
    except Exception as exc:
        reason = describe_failure(_cause(exc))
        log.warning("batch %s of %s failed: %s", batch_id, tenant, reason)
        try:
            batches.move(store, tenant, batch_id, BatchStatus.FAILED, error=reason)
        except Exception:
            log.exception("could not record the failure of batch %s", batch_id)
