"""Submitting and resuming training: every check a run must pass before it is queued.

The API calls these; they validate first and write last, so a refused request stores
nothing. A spec is built and a dummy batch run through it against the dataset's shape
and classes (a `.py` spec in a subprocess: user code never runs in the API server).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cluster.core import accounts
from cluster.core.store import Store
from jobs.datasets import state as datasets
from jobs.datasets.state import DatasetStatus
from jobs.datasets.transforms import build_transform
from jobs.models import checkpoints, specs
from jobs.models import state as models
from jobs.models.options import TrainOptions
from jobs.sandbox.check import check_spec
from jobs.sandbox.policy import DEFAULT_DATA, check_mounts
from jobs.training import queue
from jobs.volumes import state as volumes
from ncloud.bodies import DEFAULT_BATCH, DEFAULT_EPOCHS, TrainRequest
from ncloud.errors import Conflict, InvalidInput

KIND_DTYPES = {"image": np.uint8, "audio": np.int16, "features": np.float32, "text": np.uint8}


def _mounts(store: Store, tenant: str, s: TrainRequest) -> list[tuple[int, str]]:
    """The run's volumes and where each is mounted, checked; each must be the tenant's."""
    if s.volume is not None and s.volumes:
        raise InvalidInput("give volume or volumes, not both")
    wanted = [(s.volume, DEFAULT_DATA)] if s.volume is not None else []
    wanted += [(v.id, v.path or DEFAULT_DATA) for v in s.volumes]
    check_mounts(wanted)
    for volume_id, _ in wanted:
        volumes.get_volume(store, tenant, volume_id)  # another tenant's id: 404
    return wanted


def usable_dataset(store: Store, tenant: str, dataset_id: int, role: str) -> datasets.Dataset:
    ds = datasets.get(store, tenant, dataset_id)  # another tenant's id: 404
    if ds.status not in (DatasetStatus.READY, DatasetStatus.LINKED):
        raise Conflict(
            f"{role} dataset {dataset_id} is {ds.status.value}; it must be Ready "
            "(see `ncloud dataset show`)"
        )
    return ds


def dataset_shape(
    ds: datasets.Dataset, transform: dict[str, Any] | None
) -> tuple[int, tuple[int, ...]] | None:
    """(classes, per-example input shape after the eval transform), when the store knows them."""
    info = ds.info
    kind, shape = info.get("kind"), info.get("shape")
    classes = info.get("classes")
    counts = info.get("class_counts") or {}
    if not kind or not shape or (not classes and not counts):
        return None
    n = len(classes) if classes else max(int(k) for k in counts) + 1
    t = build_transform(transform, train=False, kind=kind)
    zero = np.zeros((1, *shape), KIND_DTYPES.get(kind, np.float32))
    out = t.fixed(zero, np.random.default_rng(0))
    return n, tuple(int(d) for d in out.shape[1:])


def submit(store: Store, tenant: str, s: TrainRequest) -> tuple[models.Model, models.Run]:
    spec = specs.parse_spec(s.spec_name, s.spec_text)
    epochs = s.epochs if s.epochs is not None else spec.epochs or DEFAULT_EPOCHS
    batch = s.batch_size if s.batch_size is not None else spec.batch_size or DEFAULT_BATCH
    if epochs < 1:
        raise InvalidInput(f"epochs must be at least 1, not {epochs}")
    if batch < 1:
        raise InvalidInput(f"batch size must be at least 1, not {batch}")
    if not 0 <= s.validation_percent < 1:
        raise InvalidInput("validation percent must be in [0, 1), e.g. 0.2")
    if s.valid_dataset is not None and s.validation_percent:
        raise InvalidInput("give a validation dataset or --validation-percent, not both")
    train = usable_dataset(store, tenant, s.train_dataset, "training")
    if s.valid_dataset is not None:
        usable_dataset(store, tenant, s.valid_dataset, "validation")
    mounts = _mounts(store, tenant, s)
    t = accounts.get_tenant(store, tenant)
    queue.check_request(tenant, t.bundles, s.workers, s.gpus)
    shape = dataset_shape(train, spec.transform)
    if shape is not None:
        check_spec(spec, shape[0], shape[1], t.id)
    options = TrainOptions(
        epochs=epochs,
        batch_size=batch,
        workers=s.workers,
        gpus=s.gpus,
        validation_percent=s.validation_percent,
        max_restarts=s.max_restarts,
        checkpoint_every=s.checkpoint_every,
        keep_checkpoints=s.keep_checkpoints,
        priority=s.priority,
        seed=s.seed,
        volumes=tuple({"id": v, "path": p} for v, p in mounts),
    )
    return models.create(
        store,
        tenant,
        s.name,
        s.spec_name,
        s.spec_text,
        s.train_dataset,
        s.valid_dataset,
        mounts[0][0] if mounts else None,
        options,
    )


def resume(
    store: Store, tenant: str, model_id: int, epochs: int | None, checkpoint: int | None
) -> models.Run:
    """Queue a new attempt from the last good checkpoint (or the one named)."""
    model = models.get(store, tenant, model_id)
    last = models.latest_run(store, tenant, model_id)
    if not last.status.is_terminal():
        raise Conflict(f"model {model_id} is {last.status.value}; it is not stopped or finished")
    found = [int(c["epoch"]) for c in checkpoints.list_checkpoints(model.url)]
    if checkpoint is not None and checkpoint not in found:
        raise InvalidInput(f"model {model_id} has no checkpoint {checkpoint}; it has {found}")
    skipped: list[str] = []
    if checkpoint is not None:
        checkpoints.intact(model.url, checkpoint)  # a corrupt one: 422 naming the file, now
        start = checkpoint
    else:
        # The newest whose bytes are intact; no checkpoint at all (stopped while queued, or
        # none could be written): it starts over. The new attempt's history says which.
        newest, skipped = checkpoints.newest_intact(model.url)
        start = newest or 0
    target = epochs if epochs is not None else max(model.options.epochs, last.epochs)
    if target < 1:
        raise InvalidInput(f"epochs must be at least 1, not {target}")
    if target <= start:
        raise InvalidInput(
            f"model {model_id} is at epoch {start} already: ask for more epochs (-e {start + 1})"
        )
    usable_dataset(store, tenant, model.train_dataset_id, "training")
    note = f"resumed from epoch {start}" if start else "no checkpoint: starting at epoch 1"
    if skipped:
        note += " (" + "; ".join(skipped) + ")"
    # With no --checkpoint the trainer takes the newest intact one itself (the same one, and
    # its log says why newer ones were skipped); with one, exactly that one.
    return models.new_attempt(store, tenant, model_id, target, checkpoint, start, note)
