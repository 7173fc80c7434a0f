"""Training checkpoints under a run's storage prefix: a .pt file, then its JSON index last."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from cluster.core import storage
from ncloud.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

NAME = re.compile(r"ckpt-(\d+)\.json$")
NO_LIMIT = 1 << 62
CHUNK = 8 << 20
# What torch.load(weights_only=True) reads back; anything else is refused at save time.
PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def checkpoint_url(run_url: str, epoch: int, suffix: str) -> str:
    """The URL of one checkpoint file: suffix "pt" (the state) or "json" (its index)."""
    return storage.join(run_url, "checkpoints", f"ckpt-{epoch:04d}.{suffix}")


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise InvalidInput(f"checkpoint key {where}[{key!r}] is not a str or int")
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not isinstance(value, PLAIN):
        raise InvalidInput(
            f"checkpoint value {where} is a {type(value).__name__}; keep to tensors, dicts, "
            "lists, numbers and strings (weights_only loading refuses anything else)"
        )


def _chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        yield bytes(view[start : start + CHUNK])


def save(
    run_url: str,
    epoch: int,
    state: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    keep: int = 3,
) -> dict[str, Any]:
    """Write checkpoint `epoch` (state first, index last, each atomically); returns its index.

    Then prunes to the newest `keep`. A save at epoch e also removes checkpoints after e:
    they belong to the history this run has just left (it was resumed from an earlier one).
    """
    if epoch < 0 or keep < 1:
        raise InvalidInput(f"epoch {epoch} must be >= 0 and keep {keep} >= 1")
    _check_plain(state, "state")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    storage.write_stream(checkpoint_url(run_url, epoch, "pt"), _chunks(data), NO_LIMIT)
    index = {
        "epoch": epoch,
        "file": f"ckpt-{epoch:04d}.pt",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "metrics": dict(metrics or {}),
        "time": time.time(),
    }
    text = json.dumps(index, indent=1, default=float).encode()
    storage.write_stream(checkpoint_url(run_url, epoch, "json"), [text], NO_LIMIT)
    _prune(run_url, epoch, keep)
    return index


def _prune(run_url: str, epoch: int, keep: int) -> None:
    epochs = [int(i["epoch"]) for i in list_checkpoints(run_url)]
    kept = [e for e in epochs if e <= epoch][-keep:]
    stale = [e for e in epochs if e not in kept]
    fs, _ = storage.filesystem(run_url)
    for old in stale:
        for suffix in ("json", "pt"):  # the index first: without it the checkpoint is gone
            _, path = storage.filesystem(checkpoint_url(run_url, old, suffix))
            if fs.exists(path):
                fs.rm(path)


def list_checkpoints(run_url: str) -> list[dict[str, Any]]:
    """The indexes of the run's complete checkpoints, by epoch ascending."""
    fs, root = storage.filesystem(storage.join(run_url, "checkpoints"))
    if not fs.exists(root):
        return []
    found = []
    for path in fs.glob(f"{root.rstrip('/')}/ckpt-*.json"):
        match = NAME.search(str(path))
        if match is None:
            continue
        try:
            index = json.loads(fs.cat_file(path))
            epoch = int(index["epoch"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("checkpoint index %s is unreadable (%s); ignoring it", path, exc)
            continue
        if epoch == int(match.group(1)):
            found.append(index)
    return sorted(found, key=lambda i: int(i["epoch"]))


def intact(run_url: str, epoch: int) -> bytes:
    """Checkpoint `epoch`'s bytes, checked against its index (InvalidInput naming the file
    when they differ). Nothing is unpickled: the trusted side may call this."""
    index_url = checkpoint_url(run_url, epoch, "json")
    pt_url = checkpoint_url(run_url, epoch, "pt")
    try:
        index = json.loads(storage.read_bytes(index_url))
    except FileNotFoundError as exc:
        raise NotFound(f"run {run_url} has no checkpoint for epoch {epoch}") from exc
    except ValueError as exc:
        raise InvalidInput(f"checkpoint index {index_url} is not JSON: {exc}") from exc
    try:
        data = storage.read_bytes(pt_url)
    except FileNotFoundError as exc:
        raise InvalidInput(f"checkpoint {pt_url} is missing although its index exists") from exc
    digest = hashlib.sha256(data).hexdigest()
    if (
        not isinstance(index, dict)
        or len(data) != index.get("bytes")
        or (digest != index.get("sha256"))
    ):
        said = index if isinstance(index, dict) else {}
        raise InvalidInput(
            f"checkpoint {pt_url} is corrupt: {len(data)} bytes with sha256 {digest[:12]}..., "
            f"its index says {said.get('bytes')} bytes, {str(said.get('sha256'))[:12]}..."
        )
    return data


def newest_intact(run_url: str, at_most: int | None = None) -> tuple[int | None, list[str]]:
    """The newest checkpoint whose bytes match its index (None: none), and why each newer
    one was skipped: what a resume will use, said before it runs."""
    skipped: list[str] = []
    for index in reversed(list_checkpoints(run_url)):
        epoch = int(index["epoch"])
        if at_most is not None and epoch > at_most:
            continue
        try:
            intact(run_url, epoch)
            return epoch, skipped
        except (InvalidInput, NotFound) as exc:
            skipped.append(f"checkpoint {epoch} skipped: {exc.message}")
    return None, skipped


def load(run_url: str, epoch: int, map_location: str = "cpu") -> dict[str, Any]:
    """Checkpoint `epoch`'s state, checked against its index (InvalidInput when corrupt)."""
    data = intact(run_url, epoch)
    pt_url = checkpoint_url(run_url, epoch, "pt")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise InvalidInput(f"checkpoint {pt_url} is corrupt: {exc}") from exc
    if not isinstance(state, dict):
        raise InvalidInput(f"checkpoint {pt_url} holds a {type(state).__name__}, not a dict")
    return state


def load_latest(
    run_url: str,
    map_location: str = "cpu",
    at_most: int | None = None,
    skipped: Callable[[str], None] | None = None,
) -> tuple[int, dict[str, Any]] | None:
    """(epoch, state) of the newest good checkpoint (epoch <= at_most), or None if none;
    `skipped` is told why each newer one was passed over (the run's log)."""
    for index in reversed(list_checkpoints(run_url)):
        epoch = int(index["epoch"])
        if at_most is not None and epoch > at_most:
            continue
        try:
            return epoch, load(run_url, epoch, map_location)
        except (InvalidInput, NotFound) as exc:
            log.warning("skipping checkpoint %d: %s", epoch, exc)
            if skipped is not None:
                skipped(f"checkpoint {epoch} skipped: {exc.message}")
    return None
