"""The datasets routes of the REST API (/api/v1/datasets)."""

from __future__ import annotations

import posixpath

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from cluster.core import storage
from jobs.datasets import state as datasets
from jobs.datasets.state import Dataset, DatasetStatus
from ncloud import responses
from ncloud.errors import Conflict, InvalidInput, NcloudError
from ncloud.manifest import Manifest, file_columns, parse_manifest, read_manifest
from ncloud.settings import settings
from ncloud.validation import check_name
from serve.auth import Caller
from serve.deps import caller, control, store
from serve.schemas import ObjectId, file_answer
from serve.uploads import manifest_body, manifest_limit, receive_archive, receive_file

router = APIRouter()
UPLOADABLE = (DatasetStatus.UPLOADING, DatasetStatus.ERROR)


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    url: str


def named_files(m: Manifest) -> set[str]:
    """The relative paths of every file the manifest names (already checked by the parser)."""
    found: set[str] = set()
    for col in file_columns(m):
        for row in m.rows:
            found.add(storage.relative_name(row.cells[col]))
    return found


def _manifest_name(value: str) -> str:
    name = posixpath.basename(value.replace("\\", "/"))
    if not name or name.startswith(".") or name != value.replace("\\", "/").split("/")[-1]:
        raise InvalidInput(f"manifest name {value!r} is invalid")
    return storage.relative_name(name)


@router.post("/datasets", status_code=201)
async def create_dataset(
    request: Request, name: str, manifest_name: str = "manifest.tsv", c: Caller = Depends(caller)
) -> responses.NewDataset:
    """Register an upload: the body is the manifest; it is checked before anything is stored."""
    tenant = c.require_tenant()
    check_name(name, "dataset name")
    manifest_name = _manifest_name(manifest_name)
    body = await manifest_body(request)
    manifest = parse_manifest(body, "/manifest-root")
    needed = named_files(manifest)

    def register() -> responses.NewDataset:
        existing = datasets.find(store(), tenant, name)
        if existing is not None and (
            existing.source != "upload" or existing.status not in UPLOADABLE
        ):
            raise Conflict(
                f"tenant {tenant!r} already has a dataset named {name!r} "
                f"({existing.status.value}): pick another --name or remove it"
            )
        ds = existing or datasets.create(
            store(),
            tenant,
            name,
            "upload",
            manifest_name,
            rows=len(manifest.rows),
            files=len(needed),
        )
        if ds.status is DatasetStatus.ERROR:
            ds = datasets.move(store(), tenant, ds.id, DatasetStatus.UPLOADING)
        storage.write_stream(storage.join(ds.raw_url, manifest_name), [body], len(body))
        present = storage.list_files(ds.raw_url)
        return {
            **ds.as_json(),
            "needed": sorted(needed),
            "present": {k: v for k, v in present.items() if k in needed},
        }

    return await run_in_threadpool(register)


@router.post("/datasets/link", status_code=201)
def link_dataset(body: LinkIn, c: Caller = Depends(caller)) -> responses.Dataset:
    """Register a manifest that already sits in S3; nothing is copied now."""
    tenant = c.require_tenant()
    check_name(body.name, "dataset name")
    url = body.url.strip()
    if not url.startswith("s3://") or "::" in url or len(url) > 1024:
        raise InvalidInput(f"link {url!r} is not allowed: give an s3://bucket/key URL")
    root = settings().storage.rstrip("/")
    if url.startswith(root + "/") and not url.startswith(storage.tenant_url(tenant) + "/"):
        raise InvalidInput("that link points into ncloud's own storage outside your tenant")
    try:
        manifest = read_manifest(url, max_bytes=manifest_limit())
    except NcloudError:
        raise
    except Exception as exc:  # S3 this server cannot use is a 503; a link it cannot read, 422
        unusable = storage.storage_error(exc)
        if unusable is not None:
            raise unusable from None
        if not isinstance(exc, OSError):
            raise
        raise InvalidInput(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    ds = datasets.create(
        store(),
        tenant,
        body.name,
        "link",
        posixpath.basename(url),
        rows=len(manifest.rows),
        files=len(named_files(manifest)),
        link_url=url,
    )
    return ds.as_json()


@router.get("/datasets")
def list_datasets(c: Caller = Depends(caller)) -> list[responses.Dataset]:
    return [d.as_json() for d in datasets.list_all(store(), c.require_tenant())]


@router.get("/datasets/{dataset_id}")
def show_dataset(dataset_id: ObjectId, c: Caller = Depends(caller)) -> responses.Dataset:
    ds = datasets.get(store(), c.require_tenant(), dataset_id)
    return ds.as_json()


@router.delete("/datasets/{dataset_id}")
def delete_dataset(dataset_id: ObjectId, c: Caller = Depends(caller)) -> responses.Dataset:
    return datasets.remove(store(), c.require_tenant(), dataset_id).as_json()


def _uploadable(tenant: str, dataset_id: int) -> Dataset:
    ds = datasets.get(store(), tenant, dataset_id)
    if ds.source != "upload" or ds.status not in UPLOADABLE:
        raise Conflict(f"dataset {dataset_id} is {ds.status.value}: files can no longer change")
    return ds


@router.put("/datasets/{dataset_id}/files/{path:path}")
async def upload_file(
    dataset_id: ObjectId, path: str, request: Request, c: Caller = Depends(caller)
) -> responses.FileSize:
    tenant = c.require_tenant()
    relative = storage.relative_name(path)
    ds = await run_in_threadpool(_uploadable, tenant, dataset_id)
    if relative == ds.manifest_name:
        raise Conflict("the manifest is fixed when the dataset is created")
    size = await receive_file(request, storage.join(ds.raw_url, relative))
    return {"path": relative, "bytes": size}


@router.post("/datasets/{dataset_id}/files")
async def upload_files(
    dataset_id: ObjectId, request: Request, c: Caller = Depends(caller)
) -> responses.Stored:
    """Many files at once: the body is an uncompressed tar of them (application/x-tar)."""
    tenant = c.require_tenant()
    ds = await run_in_threadpool(_uploadable, tenant, dataset_id)

    def target(name: str) -> tuple[str, str]:
        relative = storage.relative_name(name)
        if relative == ds.manifest_name:
            raise Conflict("the manifest is fixed when the dataset is created")
        return relative, storage.join(ds.raw_url, relative)

    stored = await receive_archive(request, target)
    return {"files": len(stored), "bytes": sum(stored.values())}


@router.get("/datasets/{dataset_id}/files")
def list_files(dataset_id: ObjectId, c: Caller = Depends(caller)) -> dict[str, int]:
    ds = datasets.get(store(), c.require_tenant(), dataset_id)
    return storage.list_files(ds.raw_url) if ds.source == "upload" else {}


@router.get("/datasets/{dataset_id}/files/{path:path}", **file_answer())
def download_file(
    dataset_id: ObjectId, path: str, c: Caller = Depends(caller)
) -> StreamingResponse:
    ds = datasets.get(store(), c.require_tenant(), dataset_id)
    relative = storage.relative_name(path)
    base = posixpath.dirname(ds.manifest_url) if ds.source == "link" else ds.raw_url
    size, chunks = storage.open_file(
        storage.join(base, relative), f"no file {relative!r} in dataset {dataset_id}"
    )
    return StreamingResponse(
        chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )


@router.post("/datasets/{dataset_id}/ingest", status_code=202)
def ingest_dataset(dataset_id: ObjectId, c: Caller = Depends(caller)) -> responses.Dataset:
    """Check every named file arrived, then ingest in the background (also: retry after Error)."""
    tenant = c.require_tenant()
    ds = _uploadable(tenant, dataset_id)
    manifest = read_manifest(ds.manifest_url, root=ds.raw_url)
    present = storage.list_files(ds.raw_url)
    missing = sorted(named_files(manifest) - set(present))
    if missing:
        raise InvalidInput(
            f"{len(missing)} files named by the manifest are not uploaded yet, "
            f"e.g. {', '.join(missing[:3])}: run the upload again to finish it"
        )
    return control().call("ingest_dataset", tenant, dataset_id)
