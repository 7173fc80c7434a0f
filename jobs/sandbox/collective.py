"""Data-parallel training without a network in the sandbox: collectives go through a pipe.

A sandbox has no network, so its ranks cannot reach each other. Each rank hands its
tensors to its trusted worker (`PipeCollective`), which runs the real collective with
the other workers over torch.distributed (gloo) and hands the result back (`relay`).
The trainer sees one small interface either way (`Collective`).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from jobs.sandbox import frames

OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


class Collective(Protocol):
    world_size: int

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor: ...

    def broadcast(self, t: torch.Tensor) -> torch.Tensor: ...  # rank 0's value


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in tensors])


def _unflat(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    at = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[at : at + n].view_as(t).to(t.dtype))
        at += n


def broadcast_module(c: Collective, model: nn.Module) -> None:
    """Every rank starts from rank 0's parameters and buffers (as DDP does)."""
    tensors = [t.data for t in model.parameters()] + [
        b for b in model.buffers() if b.is_floating_point()
    ]
    if tensors:
        with torch.no_grad():
            _unflat(c.broadcast(_flat(tensors)), tensors)


def average_gradients(c: Collective, model: nn.Module) -> None:
    """After backward: each gradient becomes the mean over the ranks, in one collective."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        flat = c.all_reduce(_flat(grads)) / c.world_size
        _unflat(flat, grads)


class TorchCollective:
    """torch.distributed's default group (the trusted side, or `ray job submit`)."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        out = t.detach().to("cpu").clone()
        dist.all_reduce(out, op=OPS[op])
        return out.to(t.device)

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        out = t.detach().to("cpu").clone()
        dist.broadcast(out, 0)
        return out.to(t.device)


class PipeCollective:
    """Inside the sandbox: each collective is a request to the trusted worker."""

    def __init__(self, channel: Any, world_size: int) -> None:
        self.channel, self.world_size = channel, world_size

    def _ask(self, op: str, t: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        a = np.ascontiguousarray(t.detach().to("cpu", torch.float64).numpy())
        header = {"kind": "collective", "op": op, "reduce": reduce, **frames.array_header(a)}
        reply, payload = self.channel.request(header, a.tobytes())
        out = frames.to_array(reply, payload)
        if out.shape != a.shape:
            raise ConnectionError("the collective came back with another shape")
        return torch.from_numpy(out.copy()).to(t.device, t.dtype)

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return self._ask("all_reduce", t, op)

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        return self._ask("broadcast", t)


def relay(
    header: dict[str, Any], payload: bytes, group: TorchCollective
) -> tuple[dict[str, Any], bytes]:
    """The trusted side of one PipeCollective request: run it for real, return the reply."""
    a = frames.to_array(header, payload)
    if a.dtype != np.float64:
        raise frames.FrameError("collectives carry float64")
    t = torch.from_numpy(a.copy())
    reduce = str(header.get("reduce", "sum"))
    if header.get("op") == "all_reduce" and reduce in OPS:
        out = group.all_reduce(t, reduce)
    elif header.get("op") == "broadcast":
        out = group.broadcast(t)
    else:
        raise frames.FrameError(f"unknown collective {header.get('op')!r}")
    result = np.ascontiguousarray(out.numpy())
    return {"kind": "collective", **frames.array_header(result)}, result.tobytes()
