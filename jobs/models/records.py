"""What a model and a run are, as read from the store (jobs.models.state writes them):
the run statuses and which may follow which."""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cluster.core import storage
from jobs.models.options import TrainOptions, stored_options


class RunStatus(StrEnum):
    QUEUED = "Queued"
    STARTING = "Starting"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"
    # Checkpointed and ended by `server stop` (or found so after a crash): queued again, at
    # its place, by the next start, and resumed from that checkpoint with no restart spent.
    SUSPENDED = "Suspended"

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED}
TRANSITIONS = {
    RunStatus.QUEUED: {RunStatus.STARTING, RunStatus.STOPPED, RunStatus.FAILED},
    RunStatus.STARTING: {
        RunStatus.RUNNING,
        *TERMINAL,
        RunStatus.STARTING,
        RunStatus.QUEUED,
        RunStatus.SUSPENDED,
    },
    # queued: a node lost, or the server killed under it
    RunStatus.RUNNING: {RunStatus.STARTING, *TERMINAL, RunStatus.QUEUED, RunStatus.SUSPENDED},
    RunStatus.SUSPENDED: {RunStatus.QUEUED, RunStatus.STOPPED, RunStatus.FAILED},
    RunStatus.COMPLETED: set(),
    RunStatus.FAILED: set(),
    RunStatus.STOPPED: set(),
}


@dataclass(frozen=True)
class Model:
    id: int
    tenant: str
    name: str
    spec_name: str
    spec_text: str
    train_dataset_id: int
    valid_dataset_id: int | None
    volume_id: int | None
    options: TrainOptions
    created_at: dt.datetime

    @property
    def url(self) -> str:
        """The model's folder in storage: runs' checkpoints, meta.json, model.pt."""
        return storage.tenant_url(self.tenant, "models", str(self.id))


@dataclass(frozen=True)
class Run:
    id: int
    tenant: str
    model_id: int
    attempt: int
    status: RunStatus
    priority: int
    epochs: int
    resume_epoch: int | None
    restarts: int
    max_restarts: int
    epochs_done: int
    reason: str | None
    error: str | None
    progress: str | None
    stop_requested: bool
    placement: list[int] | None
    history: list[list[str]]
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None

    @property
    def launch_key(self) -> str:
        """Names one launch of one run: a relaunch after a worker died gets a new key."""
        return f"m{self.model_id}-a{self.attempt}-r{self.restarts}"


@functools.lru_cache(maxsize=4096)
def _options(text: str, volume_id: int | None) -> TrainOptions:
    """Stored options, decoded once per distinct text: a listing of 200 models decoded the
    same few texts 200 times (TrainOptions is frozen, so sharing one is safe)."""
    return stored_options(json.loads(text), volume_id)


def model_of(tenant: str, row: Any) -> Model:
    m = row._mapping
    return Model(
        m["id"],
        tenant,
        m["name"],
        m["spec_name"],
        m["spec_text"],
        m["train_dataset_id"],
        m["valid_dataset_id"],
        m["volume_id"],
        _options(m["options"], m["volume_id"]),
        m["created_at"],
    )


def run_of(tenant: str, row: Any) -> Run:
    m = row._mapping
    return Run(
        m["id"],
        tenant,
        m["model_id"],
        m["attempt"],
        RunStatus(m["status"]),
        m["priority"],
        m["epochs"],
        m["resume_epoch"],
        m["restarts"],
        m["max_restarts"],
        m["epochs_done"],
        m["reason"],
        m["error"],
        m["progress"],
        bool(m["stop_requested"]),
        json.loads(m["placement"]) if m["placement"] else None,
        json.loads(m["history"]),
        m["created_at"],
        m["updated_at"],
        m["started_at"],
        m["ended_at"],
    )
