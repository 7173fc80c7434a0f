"""A trained network, served from a sandbox: the replica never imports the tenant's code.

Inside (`load_network`): the spec is built and the weights loaded (weights_only) from the
files the trusted side staged; then each `forward` frame is one batch. Outside
(`SandboxedNetwork`): the replica or batch task stages the weights, starts the sandbox
and calls it like a module, with the inputs already decoded and transformed.

Why not torch.export: an exported program is a graph the tenant wrote, and its ops
(aten::from_file, for one) could read the replica's files; loading it safely would mean
vetting every op. A sandboxed child costs one pipe round trip per batch instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cluster.core import storage
from jobs.models import checkpoints
from jobs.sandbox import frames
from jobs.sandbox.launch import Frame, Sandbox, new_slot
from jobs.sandbox.policy import Limits, Policy
from ncloud.errors import Conflict, InvalidInput, ServerError
from ncloud.settings import settings

LOAD_TIMEOUT_S = 120.0
FORWARD_TIMEOUT_S = 60.0
WEIGHTS = "weights.pt"


def load_network(args: dict[str, Any]) -> tuple[torch.nn.Module, torch.device]:
    """Inside the sandbox: the spec built for the meta's shapes, with the staged weights."""
    from jobs.models import specs

    spec = specs.parse_spec(str(args["spec_name"]), str(args["spec_text"]))
    shape = tuple(int(d) for d in args["input_shape"])
    built = specs.build(spec, int(args["num_classes"]), shape)
    state = torch.load(Path(args["weights"]), map_location="cpu", weights_only=True)
    if args.get("checkpoint"):  # a checkpoint holds the optimizer's state beside the model's
        state = state["model"]
    built.model.load_state_dict(state)
    cuda = args.get("device") == "cuda" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(1)
    return built.model.to(device).eval(), device


def stage_weights(model_url: str, checkpoint: int | None, target: Path) -> int | None:
    """Copy the weights to serve into target, unread: a named checkpoint (checked against its
    index), else the final model.pt, else the newest checkpoint. Returns the checkpoint."""
    final = storage.join(model_url, "model.pt")
    fs, path = storage.filesystem(final)
    if checkpoint is None and fs.exists(path):
        _copy(final, target)
        return None
    if checkpoint is None:
        found = checkpoints.list_checkpoints(model_url)
        if not found:
            raise Conflict("this model has no checkpoint yet: train it (or wait for an epoch)")
        checkpoint = int(found[-1]["epoch"])
    index_url = checkpoints.checkpoint_url(model_url, checkpoint, "json")
    try:
        index = json.loads(storage.read_bytes(index_url))
    except FileNotFoundError as exc:
        raise InvalidInput(f"this model has no checkpoint for epoch {checkpoint}") from exc
    digest = _copy(checkpoints.checkpoint_url(model_url, checkpoint, "pt"), target)
    if not isinstance(index, dict) or digest != index.get("sha256"):
        raise InvalidInput(f"checkpoint {checkpoint} is corrupt: its sha256 does not match")
    return checkpoint


def _copy(url: str, target: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(target, "wb") as out:
            for chunk in storage.read_chunks(url):
                digest.update(chunk)
                out.write(chunk)
    except FileNotFoundError as exc:
        raise InvalidInput(f"{url} is missing") from exc
    return digest.hexdigest()


class SandboxedNetwork:
    """Call it with a batch tensor; the forward pass runs in the tenant's sandbox."""

    def __init__(
        self,
        model_url: str,
        spec: tuple[str, str],
        meta: dict[str, Any],
        checkpoint: int | None,
        tenant_id: int,
        device: str = "cpu",
        gpus: tuple[str, ...] = (),
        mounts: Sequence[tuple[int, str]] = (),
        pull: Callable[[int, Path], object] | None = None,
    ) -> None:
        """mounts: (volume, path) pairs, read-only; pull(volume, folder) fetches one's files."""
        self.num_classes = int(meta["num_classes"])
        policy = Policy(
            new_slot("serve"),
            tenant_id,
            Limits(memory_bytes=0, processes=64),
            volumes=tuple(path for _, path in mounts),
            gpus=gpus,
            single_tenant=settings().single_tenant,
            volumes_writable=False,
        )
        self.lock = threading.Lock()  # one forward in flight: from a thread or a coroutine
        self.async_lock = asyncio.Lock()
        self.box = Sandbox("serve", policy)
        self.box.start()
        try:
            (policy.slot / "in" / "model").mkdir(parents=True, exist_ok=True)
            weights = policy.slot / "in" / "model" / WEIGHTS
            self.checkpoint = stage_weights(model_url, checkpoint, weights)
            for i, (volume, _) in enumerate(mounts):
                if pull is None:
                    raise ServerError("volumes to mount, but no way to fetch their files")
                pull(volume, policy.volume_dir(i))
            self.box.wait_ready()
            args = {
                "spec_name": spec[0],
                "spec_text": spec[1],
                "num_classes": self.num_classes,
                "input_shape": list(meta["input_shape"]),
                "weights": policy.inside(weights),
                "checkpoint": self.checkpoint is not None,
                "device": device,
            }
            self.box.begin(args, tenant_id)
            header = self._reply(LOAD_TIMEOUT_S, "loading the network")
        except BaseException:
            self.box.close()
            raise
        if header.get("kind") == "error":
            self.box.close()
            raise InvalidInput(
                f"the network could not be loaded: {str(header.get('error'))[-2000:]}"
            )
        self.device = str(header.get("device", "cpu"))

    def _reply(self, timeout_s: float, what: str) -> dict[str, Any]:
        return self._header(self.box.recv(timeout_s), what)

    def _header(self, frame: Frame | None, what: str) -> dict[str, Any]:
        if frame is None:
            self.box.kill()
            raise ServerError(f"{what} failed: the sandbox ended ({self.box.exit_text()})")
        return frame[0] if frame[0].get("kind") != "output" else {**frame[0], "_payload": frame[1]}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = _batch_array(x)
        with self.lock:
            self.box.send({"kind": "forward", **frames.array_header(a)}, a.tobytes())
            header = self._reply(FORWARD_TIMEOUT_S, "the forward pass")
        return _output(header, a)

    async def call_async(self, x: torch.Tensor) -> torch.Tensor:
        """`self(x)` for a coroutine: the sandbox computes while the event loop goes on. A
        cancelled caller (a client that hung up) does not cancel the round trip, which
        still reads its own answer: the next forward must not get it."""
        a = _batch_array(x)
        return _output(await asyncio.shield(self._round_trip(a)), a)

    async def _round_trip(self, a: np.ndarray) -> dict[str, Any]:
        async with self.async_lock:
            if not self.lock.acquire(blocking=False):  # a thread's forward: never wait on it here
                raise ServerError("the network is busy with a forward from another thread")
            try:
                self.box.send({"kind": "forward", **frames.array_header(a)}, a.tobytes())
                frame = await self.box.recv_async(FORWARD_TIMEOUT_S)
                return self._header(frame, "the forward pass")
            finally:
                self.lock.release()

    def close(self) -> None:
        self.box.close()

    def __del__(self) -> None:
        box = getattr(self, "box", None)
        if box is not None:
            box.close()


def _batch_array(x: torch.Tensor) -> np.ndarray:
    a = np.ascontiguousarray(x.detach().cpu().numpy())
    return a if str(a.dtype) in frames.DTYPES else a.astype(np.float32)


def _output(header: dict[str, Any], a: np.ndarray) -> torch.Tensor:
    if header.get("kind") == "output_error":
        raise ServerError(f"the network failed: {str(header.get('error'))[-1000:]}")
    out = frames.to_array(header, header.pop("_payload", b""))
    if out.ndim != 2 or out.shape[0] != a.shape[0] or out.dtype != np.float32:
        raise ServerError(f"the network answered shape {list(out.shape)}, not [N, classes]")
    return torch.from_numpy(out.copy())
