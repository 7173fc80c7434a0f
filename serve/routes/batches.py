"""The batch prediction routes of the REST API (/api/v1/batches).

Over a dataset: ``POST /batches`` and it runs. Over a new manifest: ``POST /batches/upload``
with the manifest as the body (answers with the files it names), ``PUT`` each file, then
``POST /batches/{id}/start``. The result is a CSV or JSONL file: ``GET /batches/{id}/result``.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from cluster.core import storage
from jobs.batches import predict as batch_predict
from jobs.batches import state as batches
from jobs.batches.state import Batch, BatchStatus
from jobs.models import predictor
from jobs.models import state as models
from jobs.sandbox.policy import check_mounts
from jobs.training import submit as training
from jobs.volumes import state as volumes
from ncloud import responses
from ncloud.bodies import MAX_INT, MAX_MOUNTS, Id, Mount
from ncloud.errors import Conflict
from ncloud.manifest import parse_manifest
from ncloud.validation import parse_mount
from serve.auth import Caller
from serve.deps import caller, control, store
from serve.routes.datasets import named_files
from serve.schemas import ObjectId, file_answer
from serve.uploads import manifest_body, receive_file

router = APIRouter()


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Id
    dataset: Id
    k: int = predictor.DEFAULT_K
    format: str = "csv"
    volumes: list[Mount] = Field(default_factory=list, max_length=MAX_MOUNTS)


def _volumes(tenant: str, wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The volumes the batch's network reads, checked: the tenant's own, at allowed paths."""
    check_mounts([(int(v["id"]), str(v["path"])) for v in wanted])
    for v in wanted:
        volumes.get_volume(store(), tenant, int(v["id"]))  # another tenant's id: 404
    return wanted


def usable_model(tenant: str, model_id: int) -> tuple[models.Model, dict[str, Any]]:
    """The tenant's model (404 otherwise) with its meta.json and weights (409 otherwise)."""
    model = models.get(store(), tenant, model_id)
    meta = predictor.read_meta(model.url)
    predictor.pinned_checkpoint(model.url)
    return model, meta


def _started(batch: Batch) -> responses.Batch:
    return control().call("start_batch", batch.tenant, batch.id)  # type: ignore[no-any-return]


@router.post("/batches", status_code=201)
def predict_dataset(body: BatchIn, c: Caller = Depends(caller)) -> responses.Batch:
    """Predict every row of a Ready (or linked) dataset."""
    tenant = c.require_tenant()
    batches.check_options(body.k, body.format)
    model, meta = usable_model(tenant, body.model)
    ds = training.usable_dataset(store(), tenant, body.dataset, "the")
    batch_predict.check_dataset(meta, ds.info)
    mounts = _volumes(tenant, [v.model_dump() for v in body.volumes])
    batch = batches.create(
        store(), tenant, model.id, body.k, body.format, ds.rows, dataset_id=ds.id, volumes=mounts
    )
    return _started(batch)


@router.post("/batches/upload", status_code=201)
async def upload_manifest(
    request: Request,
    model: Annotated[int, Query(ge=1, le=MAX_INT)],
    name: str = "manifest.tsv",
    k: int = predictor.DEFAULT_K,
    format: str = "csv",
    volume: list[str] = Query([], description="ID or ID:PATH, repeatable (read-only)"),
    c: Caller = Depends(caller),
) -> responses.NewBatch:
    """Register a batch over a new manifest (the body); PUT the files it names, then start."""
    tenant = c.require_tenant()
    batches.check_options(k, format)
    mounts = await run_in_threadpool(_volumes, tenant, [parse_mount(v) for v in volume])
    manifest_name = storage.relative_name(posixpath.basename(name.replace("\\", "/")))
    body = await manifest_body(request)
    _, meta = await run_in_threadpool(usable_model, tenant, model)
    manifest = parse_manifest(body, "/manifest-root")
    batch_predict.manifest_input(manifest, str(meta.get("kind", "image")))
    needed = named_files(manifest)

    def register() -> responses.NewBatch:
        batch = batches.create(
            store(),
            tenant,
            model,
            k,
            format,
            len(manifest.rows),
            manifest_name=manifest_name,
            volumes=mounts,
        )
        storage.write_stream(batch.manifest_url, [body], len(body))
        return {**batch.as_json(), "needed": sorted(needed)}

    return await run_in_threadpool(register)


def _uploading(tenant: str, batch_id: int) -> Batch:
    batch = batches.get(store(), tenant, batch_id)
    if batch.status is not BatchStatus.UPLOADING:
        raise Conflict(f"batch prediction {batch_id} is {batch.status.value}: its files are fixed")
    return batch


@router.put("/batches/{batch_id}/files/{path:path}")
async def upload_file(
    batch_id: ObjectId, path: str, request: Request, c: Caller = Depends(caller)
) -> responses.FileSize:
    tenant = c.require_tenant()
    relative = storage.relative_name(path)
    batch = await run_in_threadpool(_uploading, tenant, batch_id)
    size = await receive_file(request, storage.join(batch.inputs_url, relative))
    return {"path": relative, "bytes": size}


@router.post("/batches/{batch_id}/start", status_code=202)
def start(batch_id: ObjectId, c: Caller = Depends(caller)) -> responses.Batch:
    """Queue an uploaded batch; files never uploaded become bad rows of its result."""
    tenant = c.require_tenant()
    _uploading(tenant, batch_id)
    return _started(batches.move(store(), tenant, batch_id, BatchStatus.QUEUED))


@router.get("/batches")
def list_batches(c: Caller = Depends(caller)) -> list[responses.Batch]:
    return [b.as_json() for b in batches.list_all(store(), c.require_tenant())]


@router.get("/batches/{batch_id}")
def show_batch(batch_id: ObjectId, c: Caller = Depends(caller)) -> responses.Batch:
    return batches.get(store(), c.require_tenant(), batch_id).as_json()


@router.get("/batches/{batch_id}/result", **file_answer("text/csv", "application/x-ndjson"))
def result(batch_id: ObjectId, c: Caller = Depends(caller)) -> StreamingResponse:
    batch = batches.get(store(), c.require_tenant(), batch_id)
    if batch.status is not BatchStatus.COMPLETED:
        raise Conflict(f"batch prediction {batch_id} is {batch.status.value}; no result yet")
    media = "text/csv" if batch.format == "csv" else "application/x-ndjson"
    size, chunks = storage.open_file(
        batch.result_url, f"the result of batch prediction {batch_id} is gone"
    )
    return StreamingResponse(chunks, media_type=media, headers={"Content-Length": str(size)})
