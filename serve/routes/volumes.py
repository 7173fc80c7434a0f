"""The volumes routes of the REST API (/api/v1/volumes): thin calls into jobs.volumes.state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from jobs.volumes import state as volumes
from ncloud import responses
from serve.auth import Caller
from serve.deps import caller, store
from serve.schemas import ObjectId, file_answer
from serve.uploads import receive_archive, receive_file

router = APIRouter()


class VolumeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


def _volume(v: volumes.Volume) -> responses.Volume:
    return {
        "id": v.id,
        "name": v.name,
        "files": v.files,
        "bytes": v.bytes,
        "created_at": v.created_at.isoformat(),
        "updated_at": v.updated_at.isoformat(),
    }


@router.post("/volumes", status_code=201)
def create_volume(body: VolumeIn, c: Caller = Depends(caller)) -> responses.Volume:
    return _volume(volumes.create_volume(store(), c.require_tenant(), body.name))


@router.get("/volumes")
def list_volumes(c: Caller = Depends(caller)) -> list[responses.Volume]:
    return [_volume(v) for v in volumes.list_volumes(store(), c.require_tenant())]


@router.get("/volumes/{volume_id}")
def show_volume(volume_id: ObjectId, c: Caller = Depends(caller)) -> responses.VolumeDetail:
    tenant = c.require_tenant()
    found = volumes.get_volume(store(), tenant, volume_id)
    listing = volumes.list_volume_files(store(), tenant, volume_id)
    return {
        **_volume(found),
        "file_list": [{"path": path, "bytes": size} for path, size in listing.items()],
    }


@router.delete("/volumes/{volume_id}")
def delete_volume(volume_id: ObjectId, c: Caller = Depends(caller)) -> dict[str, Any]:
    return {
        **_volume(volumes.delete_volume(store(), c.require_tenant(), volume_id)),
        "removed": True,
    }


@router.put("/volumes/{volume_id}/files/{path:path}")
async def put_file(
    volume_id: ObjectId, path: str, request: Request, c: Caller = Depends(caller)
) -> dict[str, Any]:
    """Add or replace one file; the raw body (application/octet-stream) is its bytes."""
    tenant = c.require_tenant()
    # Check the volume and the path before reading a byte of the body.
    name, url = await run_in_threadpool(volumes.file_url, store(), tenant, volume_id, path)
    written = await receive_file(request, url)
    found = await run_in_threadpool(volumes.record_file, store(), tenant, volume_id, name)
    return {"path": name, "bytes": written, "volume": _volume(found)}


@router.post("/volumes/{volume_id}/files")
async def put_files(
    volume_id: ObjectId, request: Request, c: Caller = Depends(caller)
) -> dict[str, Any]:
    """Add or replace many files: the body is an uncompressed tar of them (application/x-tar)."""
    tenant = c.require_tenant()
    await run_in_threadpool(volumes.get_volume, store(), tenant, volume_id)
    stored = await receive_archive(
        request, lambda name: volumes.file_url(store(), tenant, volume_id, name, True)
    )
    found = await run_in_threadpool(volumes.recount, store(), tenant, volume_id)
    return {"files": len(stored), "bytes": sum(stored.values()), "volume": _volume(found)}


@router.get("/volumes/{volume_id}/files/{path:path}", **file_answer())
def get_file(volume_id: ObjectId, path: str, c: Caller = Depends(caller)) -> StreamingResponse:
    size, chunks = volumes.open_file(store(), c.require_tenant(), volume_id, path)
    return StreamingResponse(
        chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )


@router.delete("/volumes/{volume_id}/files/{path:path}")
def delete_file(volume_id: ObjectId, path: str, c: Caller = Depends(caller)) -> dict[str, Any]:
    found = volumes.remove_file(store(), c.require_tenant(), volume_id, path)
    return {"path": volumes.file_name(path), "removed": True, "volume": _volume(found)}
