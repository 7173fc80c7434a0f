"""The models routes of the REST API (/api/v1/models): train, watch, stop, resume, results."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from cluster.core import storage
from jobs.models import checkpoints, deployments, metrics, removal
from jobs.models import state as models
from jobs.models.state import RunStatus
from jobs.training import submit as training
from ncloud import responses
from ncloud.bodies import MAX_INT, Count, TrainRequest
from ncloud.errors import InvalidInput
from serve.auth import Caller
from serve.deps import caller, control, store
from serve.schemas import ObjectId, file_answer

router = APIRouter()
STOP_WAIT_S = 45.0


class ResumeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: Count | None = None
    checkpoint: Count | None = None


def describe(
    model: models.Model,
    run: models.Run,
    positions: dict[int, int] | None = None,
    deployed: dict[int, deployments.DeploymentStatus] | None = None,
) -> responses.Model:
    """A model and its latest run; a listing passes the queue positions and deployment states
    it read once for all its models."""
    if deployed is None:
        deployed = deployments.states(store(), run.tenant)
    dep = deployed.get(model.id)
    if positions is None and run.status is RunStatus.QUEUED:
        positions = models.queue_positions(store(), run.tenant)
    o = model.options
    return {
        "id": model.id,
        "name": model.name,
        "spec": model.spec_name,
        "status": run.status.value,
        "attempt": run.attempt,
        "epochs": run.epochs,
        "epochs_done": run.epochs_done,
        "restarts": run.restarts,
        "max_restarts": run.max_restarts,
        "position": (positions or {}).get(model.id) if run.status is RunStatus.QUEUED else None,
        "reason": run.reason if run.status in (RunStatus.QUEUED, RunStatus.SUSPENDED) else None,
        "progress": run.progress,
        "error": run.error,
        "deployment": dep.value if dep else None,
        "train_dataset": model.train_dataset_id,
        "valid_dataset": model.valid_dataset_id,
        "volume": model.volume_id,  # the first of `volumes`
        "batch_size": o.batch_size,
        "workers": o.workers,
        "gpus": o.gpus,
        "validation_percent": o.validation_percent,
        "checkpoint_every": o.checkpoint_every,
        "keep_checkpoints": o.keep_checkpoints,
        "priority": o.priority,
        "seed": o.seed,
        "volumes": responses.mounted(o.volumes),
        "created_at": model.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
    }


@router.post("/models", status_code=201)
def train(body: TrainRequest, c: Caller = Depends(caller)) -> responses.Model:
    tenant = c.require_tenant()
    model, run = training.submit(store(), tenant, body)
    control().call("wake")
    return describe(model, run)


@router.get("/models")
def list_models(status: str | None = None, c: Caller = Depends(caller)) -> list[responses.Model]:
    tenant = c.require_tenant()
    groups = {
        "done": {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED},
        "training": {RunStatus.QUEUED, RunStatus.STARTING, RunStatus.RUNNING, RunStatus.SUSPENDED},
    }
    if status is not None and status not in groups:
        raise InvalidInput(f"status must be one of {sorted(groups)}, not {status!r}")
    found = models.list_models(store(), tenant)
    positions = models.queue_positions(store(), tenant)
    deployed = deployments.states(store(), tenant)
    return [
        describe(m, r, positions, deployed)
        for m, r in found
        if status is None or r.status in groups[status]
    ]


@router.get("/models/{model_id}")
def show_model(model_id: ObjectId, c: Caller = Depends(caller)) -> responses.ModelDetail:
    tenant = c.require_tenant()
    model = models.get(store(), tenant, model_id)
    runs = models.list_runs(store(), tenant, model_id)
    return {
        **describe(model, runs[-1]),
        "metrics": metrics.epochs(store(), tenant, model_id),
        "runs": [
            {
                "attempt": r.attempt,
                "status": r.status.value,
                "restarts": r.restarts,
                "epochs": r.epochs,
                "error": r.error,
                "history": [{"status": s, "at": at, "note": note} for s, at, note in r.history],
            }
            for r in runs
        ],
        "checkpoints": [c["epoch"] for c in checkpoints.list_checkpoints(model.url)],
    }


@router.get("/models/{model_id}/logs")
def logs(
    model_id: ObjectId,
    after: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    c: Caller = Depends(caller),
) -> responses.Logs:
    tenant = c.require_tenant()
    models.get(store(), tenant, model_id)
    run = models.latest_run(store(), tenant, model_id)
    return {
        "lines": metrics.lines(store(), tenant, model_id, after, limit),
        "status": run.status.value,
        "progress": run.progress,
        "epochs_done": run.epochs_done,
        "epochs": run.epochs,
    }


@router.post("/models/{model_id}/stop")
async def stop(
    model_id: ObjectId, wait: bool = True, c: Caller = Depends(caller)
) -> responses.Model:
    """Ask the run to checkpoint and end; with wait, answer once it has ended."""
    tenant = c.require_tenant()
    model = await run_in_threadpool(models.get, store(), tenant, model_id)
    await run_in_threadpool(control().call, "stop_run", tenant, model_id)
    deadline = time.monotonic() + STOP_WAIT_S
    while True:  # the model's row does not change; only its run does
        run = await run_in_threadpool(models.latest_run, store(), tenant, model_id)
        if not wait or run.status.is_terminal() or time.monotonic() > deadline:
            return describe(model, run)
        await asyncio.sleep(0.25)


@router.post("/models/{model_id}/resume", status_code=201)
def resume(model_id: ObjectId, body: ResumeIn, c: Caller = Depends(caller)) -> responses.Model:
    tenant = c.require_tenant()
    run = training.resume(store(), tenant, model_id, body.epochs, body.checkpoint)
    control().call("wake")
    return describe(models.get(store(), tenant, model_id), run)


@router.delete("/models/{model_id}")
def remove(model_id: ObjectId, c: Caller = Depends(caller)) -> responses.Removed:
    tenant = c.require_tenant()
    removed = removal.remove(store(), tenant, model_id)
    return {"id": removed.id, "name": removed.name, "removed": True}


@router.get("/models/{model_id}/results")
def results(model_id: ObjectId, c: Caller = Depends(caller)) -> dict[str, int]:
    """Every file of the model's results: model.pt, meta.json, checkpoints, metrics and log."""
    tenant = c.require_tenant()
    model = models.get(store(), tenant, model_id)
    return storage.list_files(model.url)


@router.get("/models/{model_id}/results/{name:path}", **file_answer())
def result_file(model_id: ObjectId, name: str, c: Caller = Depends(caller)) -> StreamingResponse:
    tenant = c.require_tenant()
    model = models.get(store(), tenant, model_id)
    size, chunks = storage.open_file(
        storage.safe_join(model.url, name, "result path"),
        f"model {model_id} has no result file {name!r}",
    )
    return StreamingResponse(
        chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )
