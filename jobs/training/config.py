"""A training run's configuration as one rank gets it, and what a rank reports: no torch
here, so the trusted side (jobs.training.worker, jobs.sandbox.staging) builds and checks it
without loading the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from ncloud.errors import InvalidInput

BAR_WIDTH = 10


class Outcome(StrEnum):
    """How one worker's launch ended, as the worker tells the scheduler."""

    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"  # the tenant's doing (its code, its data): the run fails
    CRASHED = "crashed"  # the platform's (a worker or node lost): the run restarts
    RUNNING = "running"  # not ended yet (an answer to `wait` with a timeout)


@dataclass
class TrainConfig:
    spec_name: str
    spec_text: str
    train_url: str  # an ingested dataset's URL (index.json + shards/)
    valid_url: str | None = None
    validation_percent: float = 0.0  # without valid_url: hold out this fraction of train rows
    epochs: int = 10  # total epochs wanted (a resumed run continues up to this)
    batch_size: int = 64
    run_url: str = ""  # storage prefix for checkpoints/, meta.json, model.pt ("": write nothing)
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    resume: bool = False  # start from the newest good checkpoint (if any)
    resume_epoch: int | None = None  # or from this one exactly
    rank: int = 0
    world_size: int = 1
    dist_url: str | None = None  # "tcp://host:port" when world_size > 1
    gpus: int = 0  # > 0: model and data on cuda
    threads: int = 1  # torch.set_num_threads
    seed: int = 0
    cache_dir: str | None = None  # node-local shard cache (ShardLoader cache_dir)


class Reporter(Protocol):
    def log(self, line: str) -> None: ...

    def progress(
        self, epoch: int, batch: int, batches: int, cost: float, elapsed_s: float
    ) -> None: ...

    def epoch(self, metrics: dict[str, Any]) -> None: ...

    def checkpoint(self, index: dict[str, Any]) -> None: ...


def progress_line(epoch: int, batch: int, batches: int, cost: float, elapsed_s: float) -> str:
    """neon's progress bar: 'Epoch 3 [Train |█████     | 40/79 batches, 0.42 cost, 3.1s]'."""
    filled = min(BAR_WIDTH, round(BAR_WIDTH * batch / batches)) if batches else BAR_WIDTH
    bar = "█" * filled + " " * (BAR_WIDTH - filled)
    return (
        f"Epoch {epoch} [Train |{bar}| {batch}/{batches} batches, "
        f"{cost:.2f} cost, {elapsed_s:.1f}s]"
    )


def check(cfg: TrainConfig, collective_given: bool) -> None:
    """What a config must hold before anything is read (the device is the trainer's)."""
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.checkpoint_every < 1 or cfg.threads < 1:
        raise InvalidInput("epochs, batch_size, checkpoint_every and threads must be >= 1")
    if cfg.keep_checkpoints < 1:
        raise InvalidInput(f"keep_checkpoints {cfg.keep_checkpoints} must be >= 1")
    if cfg.world_size < 1 or not 0 <= cfg.rank < cfg.world_size:
        raise InvalidInput(f"rank {cfg.rank} is not in 0..{cfg.world_size - 1}")
    if cfg.world_size > 1 and not cfg.dist_url and not collective_given:
        raise InvalidInput("a run of several workers needs a dist_url (tcp://host:port)")
    if not 0.0 <= cfg.validation_percent < 1.0:
        raise InvalidInput(
            f"validation_percent {cfg.validation_percent} must be a fraction in [0, 1): "
            "0.2 holds out 20% of the training rows"
        )
    if cfg.valid_url and cfg.validation_percent:
        raise InvalidInput("give a validation dataset or a validation_percent, not both")
    if (cfg.resume or cfg.resume_epoch is not None) and not cfg.run_url:
        raise InvalidInput("resuming needs the run_url that holds the checkpoints")


@dataclass(frozen=True)
class WorkerJob:
    """What the scheduler hands a worker for one rank: the rank's config, plus the S3 links
    of linked datasets, which the worker ingests into its node's cache (then `train_url` /
    `valid_url` name the cached copy)."""

    cfg: TrainConfig
    train_link: str | None = None
    valid_link: str | None = None
