"""What the REST API answers, declared once: the routes build these (mypy checks each
literal, FastAPI validates each answer against it and publishes it in /openapi.json) and
the client returns them.

Times are ISO 8601 strings in UTC. `typing_extensions.TypedDict` because pydantic needs it
on Python 3.11.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NotRequired

from typing_extensions import TypedDict


class Mounted(TypedDict):
    id: int
    path: str


def mounted(volumes: Iterable[Mapping[str, Any]]) -> list[Mounted]:
    """Stored volume mounts ({"id", "path"} dicts) as an answer lists them."""
    return [{"id": int(v["id"]), "path": str(v["path"])} for v in volumes]


class FileSize(TypedDict):
    path: str
    bytes: int


class Stored(TypedDict):
    """What an archive of files stored: how many, their bytes."""

    files: int
    bytes: int


class User(TypedDict):
    email: str
    admin: bool
    tenants: list[str]
    created_at: str


class NewUser(User):
    token: str  # shown once


class Tenant(TypedDict):
    name: str
    cpus: float
    gpus: float
    memory: int
    placement_group: str
    created_at: str


class TenantDetail(Tenant):
    users: list[str]
    reservation: dict[str, Any]


class Token(TypedDict):
    id: str
    name: str
    created_at: str
    last_used_at: str | None
    revoked: bool


class AuditEntry(TypedDict):
    """One state-changing call: who, when, what, on which object, and how it ended."""

    id: int
    at: str
    user: str
    tenant: str | None
    action: str  # "POST /models/{model_id}/stop"
    object: str | None  # "model_id=3"
    status: int
    outcome: str  # "ok" or the error's code
    address: str | None
    detail: str | None  # the error's message


class UsageTotal(TypedDict):
    tenant: str
    cpu_hours: float
    gpu_hours: float
    memory_gib_hours: float


class UsageItem(UsageTotal):
    """A model's runs (kind "run", every attempt) or its deployments, and what they held."""

    kind: str  # "run" | "deployment"
    model: int
    name: str | None  # None once the model is removed
    cpus: float  # what its latest period held
    gpus: float
    memory: int  # bytes
    periods: int
    held_s: float
    running: bool  # holding now: its hours count up to now


class Usage(TypedDict):
    since: str | None
    until: str
    tenants: list[UsageTotal]
    items: list[UsageItem]


class NewToken(TypedDict):
    id: str
    name: str
    user: str  # whose token it is
    token: str  # shown once


class Dataset(TypedDict):
    id: int
    name: str
    source: str  # "upload" or "link"
    status: str  # a DatasetStatus, or "Ingesting done/total"
    rows: int
    files: int
    link: str | None
    kind: str | None
    classes: list[str] | None
    class_counts: dict[str, int] | None
    shape: list[int] | None
    bytes: int | None
    shards: Any
    error: str | None
    created_at: str
    updated_at: str


class NewDataset(Dataset):
    needed: list[str]  # the files the manifest names
    present: dict[str, int]  # those already uploaded, with their sizes


class Volume(TypedDict):
    id: int
    name: str
    files: int
    bytes: int
    created_at: str
    updated_at: str


class VolumeDetail(Volume):
    file_list: list[FileSize]


class Model(TypedDict):
    """A model with its latest run and the options it was trained with."""

    id: int
    name: str
    spec: str
    status: str  # a RunStatus
    attempt: int
    epochs: int
    epochs_done: int
    restarts: int
    max_restarts: int
    position: int | None  # in the tenant's queue, while Queued
    reason: str | None  # why it is still queued
    progress: str | None
    error: str | None
    deployment: str | None  # a DeploymentStatus
    train_dataset: int
    valid_dataset: int | None
    volume: int | None  # the first of `volumes`
    batch_size: int
    workers: int
    gpus: int
    validation_percent: float
    checkpoint_every: int
    keep_checkpoints: int
    priority: int
    seed: int
    volumes: list[Mounted]
    created_at: str
    started_at: str | None
    ended_at: str | None


class Transition(TypedDict):
    status: str
    at: str
    note: str


class Run(TypedDict):
    attempt: int
    status: str
    restarts: int
    epochs: int
    error: str | None
    history: list[Transition]


class ModelDetail(Model):
    metrics: list[dict[str, Any]]  # one per epoch: epoch, attempt, loss, accuracy, ...
    runs: list[Run]
    checkpoints: list[int]  # the epochs kept


class LogLine(TypedDict):
    id: int
    attempt: int
    line: str


class Logs(TypedDict):
    lines: list[LogLine]
    status: str
    progress: str | None
    epochs_done: int
    epochs: int


class Removed(TypedDict):
    id: int
    name: str
    removed: bool


class Deployment(TypedDict):
    model: int
    status: str  # a DeploymentStatus
    replicas: int
    gpus: int
    checkpoint: int | None
    max_batch: int
    batch_wait_ms: float
    max_queue: int
    volumes: list[Mounted]
    route: str
    token_active: bool
    error: str | None
    served: int  # requests answered 200 (counted by the replicas every few seconds)
    updated_at: str
    url: NotRequired[str]  # where to POST inputs; the API adds it
    token: NotRequired[str]  # the deployment's own token, on deploy only


class Batch(TypedDict):
    id: int
    model: int
    dataset: int | None
    manifest: str | None
    format: str
    k: int
    status: str  # a BatchStatus
    rows: int
    predicted: int
    bad_rows: int
    error: str | None
    result: str | None
    volumes: list[Mounted]
    created_at: str
    updated_at: str


class NewBatch(Batch):
    needed: list[str]
