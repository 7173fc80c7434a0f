"""Request bodies that the client sends and the API accepts, declared once.

A training run's options live here with their defaults, bounds and help: the API takes
`TrainRequest` as its body, `jobs.training.submit` checks it, the CLI and
`python -m jobs.training` take their defaults and help text from it, and the stored
`TrainOptions` its defaults.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

MAX_MOUNTS = 8
DEFAULT_EPOCHS = 10  # when neither the request nor the spec says
DEFAULT_BATCH = 64
MAX_INT = 2**63 - 1  # what the store holds (a signed 64-bit integer): past it is a 422
Id = Annotated[int, Field(ge=1, le=MAX_INT)]  # a dataset, volume, model or batch
Count = Annotated[int, Field(le=MAX_INT)]


class Mount(BaseModel):
    """A volume and where a sandbox sees it."""

    model_config = ConfigDict(extra="forbid")

    id: Id
    path: str = Field("/data", max_length=200)


class TrainRequest(BaseModel):
    """A training run to queue: `POST /api/v1/models`, `ncloud model train`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    spec_name: str
    spec_text: str = Field(max_length=512 * 1024)
    train_dataset: Id
    valid_dataset: Id | None = Field(None, description="A dataset to validate on.")
    validation_percent: float = Field(
        0.0, description="Without a validation dataset: hold out this fraction (0.2 = 20%)."
    )
    epochs: Count | None = Field(
        None, description=f"Epochs (default: the spec's, else {DEFAULT_EPOCHS})."
    )
    batch_size: Count | None = Field(
        None, description=f"Examples per batch (default: the spec's, else {DEFAULT_BATCH})."
    )
    workers: int = Field(1, ge=1, le=64, description="Data-parallel workers.")
    gpus: int = Field(0, ge=0, le=8, description="GPUs per worker.")
    volume: Id | None = Field(None, description="One volume at /data (older clients).")
    volumes: list[Mount] = Field(default_factory=list, max_length=MAX_MOUNTS)
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first.")
    max_restarts: int = Field(3, ge=0, le=100, description="Automatic resumes after failures.")
    checkpoint_every: Count = Field(1, ge=1, description="Save a checkpoint every N epochs.")
    keep_checkpoints: int = Field(3, ge=1, le=100, description="Checkpoints kept (newest).")
    seed: int = Field(
        0, ge=-MAX_INT, le=MAX_INT, description="Seeds weights, shuffling and augmentation."
    )


def default(name: str) -> Any:
    """A training option's default, as `TrainRequest` declares it."""
    return TrainRequest.model_fields[name].get_default(call_default_factory=True)


def describe(name: str) -> str:
    """A training option's help text, as `TrainRequest` declares it."""
    return TrainRequest.model_fields[name].description or ""
