"""What runs inside a sandbox for each kind of job: tenant code, with only the channel out.

Imported by jobs.sandbox.entry before the job arrives (the pool's warm-up), so the
imports at the top are what every sandbox pays once, off the request path.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import numpy as np
import torch

import jobs.sandbox.preload  # noqa: F401  (torch's lazy imports, paid while the sandbox waits)
from jobs.models import specs
from jobs.sandbox import frames
from jobs.sandbox.entry import Channel
from jobs.training import trainer
from jobs.training.config import TrainConfig, progress_line
from ncloud.errors import InvalidInput, NcloudError, StorageFull

TAIL_LINES = 30


def probe(args: dict[str, Any], channel: Channel) -> None:
    """Says the sandbox works: it is not root and sees nothing it should not."""
    import os

    with open("/proc/self/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    caps = {k: v.strip() for k, v in status.items() if k.startswith("Cap") or k == "NoNewPrivs"}
    root = sorted(os.listdir("/"))
    channel.send({"kind": "done", "uid": os.getuid(), "gid": os.getgid(), "root": root, **caps})


def _failure(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc)).splitlines()[-TAIL_LINES:]
    return "\n".join(text)


def check(args: dict[str, Any], channel: Channel) -> None:
    """Build a spec and run two dummy examples through it; one reply."""
    sys.stdout = sys.stderr  # user print()s go to the log
    torch.set_num_threads(1)
    channel.send({"kind": "done", **specs.check_request(args)})


def train(args: dict[str, Any], channel: Channel) -> None:
    """One rank of a run: events out, collectives through the trusted side."""
    from jobs.sandbox.collective import PipeCollective

    reporter = _PipeReporter(channel)
    try:
        cfg = TrainConfig(**args["cfg"])
        collective = PipeCollective(channel, cfg.world_size) if cfg.world_size > 1 else None
        channel.send({"kind": "started"})
        result = trainer.train(cfg, reporter, lambda: channel.stop_asked, collective)
        channel.send({"kind": "done", "result": result})
    except BaseException as exc:  # user code may raise anything; its tail goes to the log
        tail = _failure(exc)
        sys.stderr.write(tail + "\n")
        if isinstance(exc, StorageFull):  # the run's own folder is full: one line says it all
            tail = f"a checkpoint was lost: {exc.message}"
        channel.send({"kind": "error", "error": tail})


class _PipeReporter:
    """jobs.training.config.Reporter that forwards everything to the trusted side."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def log(self, line: str) -> None:
        self.channel.send({"kind": "log", "line": line})

    def progress(self, epoch: int, batch: int, batches: int, cost: float, elapsed_s: float) -> None:
        line = progress_line(epoch, batch, batches, cost, elapsed_s)
        self.channel.send({"kind": "progress", "line": line})

    def epoch(self, metrics: dict[str, Any]) -> None:
        self.channel.send({"kind": "epoch", "metrics": metrics})

    def checkpoint(self, index: dict[str, Any]) -> None:
        self.channel.send({"kind": "checkpoint", "index": index})


def serve(args: dict[str, Any], channel: Channel) -> None:
    """Load a trained network, then answer `forward` frames until the pipe closes."""
    from jobs.sandbox.network import load_network

    sys.stdout = sys.stderr
    try:
        net, device = load_network(args)
    except NcloudError as exc:
        channel.send({"kind": "error", "code": exc.code, "error": exc.message})
        return
    except BaseException as exc:
        channel.send({"kind": "error", "code": InvalidInput.code, "error": _failure(exc)})
        return
    channel.send({"kind": "ready_to_serve", "device": str(device)})
    while True:
        frame = channel.inbox.get()
        if frame is None:
            return
        header, payload = frame
        try:
            x = torch.from_numpy(frames.to_array(header, payload).copy()).to(device)
            with torch.no_grad():
                out = net(x)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the network returned {type(out).__name__}, not a tensor")
            y = np.ascontiguousarray(out.detach().float().cpu().numpy())
            channel.send({"kind": "output", **frames.array_header(y)}, y.tobytes())
        except BaseException as exc:
            channel.send({"kind": "output_error", "error": _failure(exc)[-2000:]})
