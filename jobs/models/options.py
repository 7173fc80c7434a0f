"""A model's training options, as stored with it: what `ncloud model train` and the API
accept, checked in jobs.training.submit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainOptions:
    epochs: int
    batch_size: int
    workers: int = 1
    gpus: int = 0
    validation_percent: float = 0.0
    max_restarts: int = 3
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    priority: int = 0
    seed: int = 0
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
