"""The child process that runs user code for one worker of one run; it talks over a pipe.

The Ray worker (jobs.runner) forks this from a pre-warmed fork server, so a launch costs
milliseconds, not a fresh interpreter and a torch import. Events sent to the parent:
``("log", line)``, ``("progress", line)``, ``("epoch", metrics)``, ``("checkpoint", index)``,
``("started", None)``, ``("done", result)`` and ``("error", traceback tail)``. SIGTERM asks
the run to checkpoint and stop; the child dies with its parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

TAIL_LINES = 30


class PipeReporter:
    """jobs.trainer.Reporter that forwards everything to the parent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def log(self, line: str) -> None:
        self.conn.send(("log", line))

    def progress(self, epoch: int, batch: int, batches: int, cost: float, elapsed_s: float) -> None:
        from jobs.trainer import progress_line

        self.conn.send(("progress", progress_line(epoch, batch, batches, cost, elapsed_s)))

    def epoch(self, metrics: dict[str, Any]) -> None:
        self.conn.send(("epoch", metrics))

    def checkpoint(self, index: dict[str, Any]) -> None:
        self.conn.send(("checkpoint", index))


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(cfg: dict[str, Any], conn: Connection, data_dir: str | None) -> None:
    _die_with_parent()
    stop = {"asked": False}

    def on_term(_signum: int, _frame: Any) -> None:
        stop["asked"] = True

    signal.signal(signal.SIGTERM, on_term)
    if data_dir:
        os.environ["NCLOUD_DATA_DIR"] = data_dir
    try:
        from jobs.trainer import TrainConfig, train

        conn.send(("started", {"pid": os.getpid(), "at": time.time()}))
        result = train(TrainConfig(**cfg), PipeReporter(conn), lambda: stop["asked"])
        conn.send(("done", result))
        conn.close()
    except BaseException as exc:  # user code may raise anything; the parent records the tail
        tail = traceback.format_exception(exc)
        text = "".join(tail).splitlines()[-TAIL_LINES:]
        with contextlib.suppress(OSError, BrokenPipeError):
            conn.send(("error", "\n".join(text)))
            conn.close()
        sys.stderr.write("\n".join(text) + "\n")
        os._exit(1)
