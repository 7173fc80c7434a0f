"""Request bodies of the REST API (responses are plain JSON built by the routes)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ncloud.bodies import MAX_INT

# An id in a route's path; past what the store holds it is a 422, not an overflow.
ObjectId = Annotated[int, Path(ge=1, le=MAX_INT)]


def file_answer(*media_types: str) -> dict[str, Any]:
    """A route's keywords for answering a file's bytes, declared as such in the OpenAPI."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    content = {media: binary for media in media_types or ("application/octet-stream",)}
    ok = {"description": "the file's bytes", "content": content}
    return {"response_class": StreamingResponse, "responses": {200: ok}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantIn(_Body):
    name: str
    cpus: float = Field(description="CPUs to reserve (at least 1)")
    gpus: float = 0
    memory: int | str = Field(0, description="bytes, or a size like 4GiB")


class TenantPatch(_Body):
    cpus: float | None = None
    gpus: float | None = None
    memory: int | str | None = None


class UserIn(_Body):
    email: str
    tenants: list[str] = []
    admin: bool = False


class UserPatch(_Body):
    add_tenants: list[str] = []
    remove_tenants: list[str] = []
    admin: bool | None = None


class TokenIn(_Body):
    name: str = "cli"
    user: str | None = None  # admin only: a token for another user (who lost theirs)
