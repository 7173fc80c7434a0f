"""A model's training options, as stored with it: a `TrainRequest` (ncloud.bodies) once
jobs.training.submit has checked it and settled epochs, batch size and mounts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ncloud.bodies import default


@dataclass(frozen=True)
class TrainOptions:
    epochs: int
    batch_size: int
    # defaults: a stored model from before an option existed; declared in ncloud.bodies
    workers: int = default("workers")
    gpus: int = default("gpus")
    validation_percent: float = default("validation_percent")
    max_restarts: int = default("max_restarts")
    checkpoint_every: int = default("checkpoint_every")
    keep_checkpoints: int = default("keep_checkpoints")
    priority: int = default("priority")
    seed: int = default("seed")
    # [{"id": volume id, "path": where the sandbox sees it}]; read-write, saved back after
    volumes: tuple[dict[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "volumes": [dict(v) for v in self.volumes]}

    def mounts(self) -> list[tuple[int, str]]:
        return [(int(v["id"]), str(v["path"])) for v in self.volumes]


def stored_options(raw: dict[str, Any], volume_id: int | None) -> TrainOptions:
    """A stored model's options; one stored before volumes had paths has its volume at /data."""
    volumes = raw.pop("volumes", None)
    if volumes is None and volume_id is not None:
        volumes = [{"id": volume_id, "path": "/data"}]
    return TrainOptions(**raw, volumes=tuple(volumes or ()))
