"""Request bodies of the REST API (responses are plain JSON built by the routes)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
