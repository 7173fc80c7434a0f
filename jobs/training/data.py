"""What the training loop reads: class counts and label maps of the datasets, the shape the
network sees, batches on the device, and a loader's next pass begun ahead of time."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from jobs.datasets.loader import NP_DTYPES, ShardLoader
from jobs.datasets.shards import DatasetIndex
from ncloud.errors import InvalidInput

Batch = tuple[torch.Tensor, torch.Tensor]


def num_classes(index: DatasetIndex) -> int:
    """The class count: the named classes, else the largest integer label + 1."""
    unlabelled = index.class_counts.get(-1, 0)
    if unlabelled:
        raise InvalidInput(f"{unlabelled} rows of the dataset have no label; training needs one")
    if index.classes is not None:
        return len(index.classes)
    labels = [k for k in index.class_counts if k >= 0]
    if not labels:
        raise InvalidInput("the training dataset has no labelled rows")
    return max(labels) + 1


def label_map(train: DatasetIndex, valid: DatasetIndex, n: int) -> torch.Tensor | None:
    """Validation label -> training label, when the two datasets name classes differently."""
    if valid.kind != train.kind:
        raise InvalidInput(f"the validation dataset holds {valid.kind}, not {train.kind}")
    if valid.classes == train.classes:
        if train.classes is None and valid.class_counts and max(valid.class_counts) >= n:
            raise InvalidInput(f"validation label {max(valid.class_counts)} is not below {n}")
        return None
    if train.classes is None or valid.classes is None:
        raise InvalidInput("one dataset has named classes and the other integer labels")
    missing = sorted(set(valid.classes) - set(train.classes))
    if missing:
        raise InvalidInput(f"validation classes {missing[:5]} are not among the training classes")
    return torch.tensor([train.classes.index(c) for c in valid.classes])


def input_shape(loader: ShardLoader, transform: dict[str, Any] | None) -> tuple[int, ...]:
    """The shape of one example as the loader hands it to the network (after its transform)."""
    index = loader.index
    if index.shape is not None:
        zero = np.zeros((1, *index.shape), NP_DTYPES[index.dtype])
        return tuple(loader.transform(zero, np.random.default_rng(0)).shape[1:])
    for x, _ in ShardLoader(loader.ds_url, batch_size=1, transform=transform, prefetch=1):
        return tuple(x.shape[1:])
    raise InvalidInput(f"dataset {loader.ds_url} has no rows")


def on_device(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """The batches on the device; on CUDA, batch i+1 is copied while batch i computes."""
    if device.type != "cuda":
        yield from batches
        return
    pending: Batch | None = None
    for x, y in batches:
        moved = (
            x.pin_memory().to(device, non_blocking=True),
            y.pin_memory().to(device, non_blocking=True),
        )
        if pending is not None:
            yield pending
        pending = moved
    if pending is not None:
        yield pending


class StartedPass:
    """A loader's pass begun in the background, so its first batch waits when it is asked for.

    Starting a pass (threads, opening shards, filling the first window) takes milliseconds;
    the trainer begins the next pass while the current one computes its last batches.
    """

    def __init__(self, loader: ShardLoader) -> None:
        self.batches = iter(loader)
        self.first: list[Batch] = []
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._begin, name="ncloud-prefetch", daemon=True)
        self.thread.start()

    def _begin(self) -> None:
        try:
            self.first.extend(itertools.islice(self.batches, 1))
        except BaseException as exc:  # raised again in the consumer
            self.error.append(exc)

    def __iter__(self) -> Iterator[Batch]:
        self.thread.join()
        if self.error:
            raise self.error[0]
        yield from self.first
        yield from self.batches

    def close(self) -> None:
        self.thread.join()
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()
