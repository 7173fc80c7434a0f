"""The Ray side of training: one long-lived worker actor per bundle of a tenant's reservation.

The controller keeps a pool of these (named, detached, pinned to their bundle) and hands
each launch of a run to them. A worker forks the user's training into a child process
from a pre-warmed fork server (jobs.worker_child), relays the child's events to the
store (log lines, the progress line, epoch metrics, Running), enforces the bundle's
memory, syncs a volume in and out, and answers `wait(key)` with the launch's outcome:
``completed``, ``stopped``, ``failed`` (user code; not retried) or ``crashed`` (the
process died; the controller resumes it). Launches are idempotent by key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import accounts
from cluster.store import open_store
from jobs import forking, linked, metrics, models, volume_sync
from jobs.models import RunStatus
from ncloud.errors import NcloudError
from ncloud.settings import settings
from ncloud.validation import format_size

log = logging.getLogger("ncloud.runner")
FLUSH_S = 0.5
PROGRESS_S = 1.0


@dataclass
class Launch:
    key: str
    run_id: int
    rank: int
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    pid: int | None = None
    stop_asked: bool = False


def _rss(pid: int) -> int:
    """Resident bytes of a process and its children (best effort, from /proc)."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


class TrainWorker:
    """Wrapped with ray.remote by the controller (see cluster.scheduler)."""

    def __init__(self, db_url: str, memory_limit: int = 0) -> None:
        logging.basicConfig(level=logging.INFO)
        self.store = open_store(db_url)
        self.memory_limit = memory_limit
        self.launches: dict[str, Launch] = {}
        self.lock = threading.Lock()
        self.ctx = forking.context(["torch", "jobs.preload", "jobs.trainer", "jobs.worker_child"])
        # Start the fork server now, off the launch path: importing torch takes seconds.
        threading.Thread(target=self._warm, daemon=True).start()

    def _warm(self) -> None:
        with contextlib.suppress(Exception):
            forking.warm()

    def rendezvous(self) -> str:
        """A tcp:// address on this node for torch.distributed's rank 0."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ip}:{port}"

    def run(self, key: str, run_id: int, rank: int, cfg: dict[str, Any]) -> dict[str, Any]:
        """Run one worker of a run to its end; a key seen before is not started twice.

        Calls on a threaded actor are not ordered, so launching and waiting are one call.
        """
        with self.lock:
            launch = self.launches.get(key)
            if launch is None:
                launch = self.launches[key] = Launch(key, run_id, rank)
                threading.Thread(target=self._run, args=(launch, cfg), daemon=True).start()
        return self.wait(key)

    def wait(self, key: str, timeout_s: float | None = None) -> dict[str, Any]:
        """The outcome of a launch, once it has ended; `unknown` if this worker never saw it."""
        launch = self.launches.get(key)
        if launch is None:
            return {"outcome": "crashed", "error": "the worker lost this launch (it restarted)"}
        if not launch.done.wait(timeout_s):
            return {"outcome": "running"}
        return dict(launch.result or {"outcome": "crashed", "error": "no result"})

    def stop(self, key: str, grace_s: float) -> bool:
        """SIGTERM the child (it checkpoints and ends); SIGKILL it after the grace period."""
        with self.lock:
            launch = self.launches.get(key)
            if launch is None:  # the stop overtook the launch: it must never start
                launch = self.launches[key] = Launch(key, -1, -1, stop_asked=True)
                launch.result = {"outcome": "stopped", "epochs_done": 0}
                launch.done.set()
        if launch.done.is_set():
            return False
        launch.stop_asked = True
        if launch.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(launch.pid, signal.SIGTERM)
        if not launch.done.wait(grace_s) and launch.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(launch.pid, signal.SIGKILL)
            launch.done.wait(30)
        return True

    # -- one launch ----------------------------------------------------------------------

    def _run(self, launch: Launch, cfg: dict[str, Any]) -> None:
        run, model = models.get_run(self.store, launch.run_id)
        tenant_id = accounts.get_tenant(self.store, run.tenant).id
        relay = _Relay(self.store, run, tenant_id, launch.rank)
        data_dir: str | None = None
        pulled: dict[str, volume_sync.Pulled] = {}
        try:
            cfg = self._resolve_data({**cfg, "cache_dir": str(settings().cache_dir)})
            if model.volume_id is not None:
                data_dir = tempfile.mkdtemp(prefix=f"ncloud-volume-{launch.key}-")
                pulled = volume_sync.pull(self.store, run.tenant, model.volume_id, Path(data_dir))
            launch.result = self._child(launch, cfg, relay, data_dir)
            ended = launch.result.get("outcome") in ("completed", "stopped", "failed")
            if model.volume_id is not None and data_dir and launch.rank == 0 and ended:
                n = volume_sync.push(
                    self.store, run.tenant, model.volume_id, Path(data_dir), pulled
                )
                relay.line(f"saved {n} file(s) back to volume {model.volume_id}")
        except NcloudError as exc:
            launch.result = {"outcome": "failed", "error": exc.message}
        except Exception as exc:  # storage or store trouble: the platform's, so retry it
            log.exception("launch %s failed", launch.key)
            launch.result = {"outcome": "crashed", "error": f"{type(exc).__name__}: {exc}"}
        finally:
            relay.flush(force=True)
            if data_dir:
                shutil.rmtree(data_dir, ignore_errors=True)
            launch.done.set()

    def _resolve_data(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Linked datasets are ingested into this node's cache by their first reader."""
        for key in ("train_url", "valid_url"):
            link = cfg.pop(key.replace("_url", "_link"), None)
            if link:
                cfg[key] = linked.ensure_cached(link)
        return cfg

    def _child(
        self, launch: Launch, cfg: dict[str, Any], relay: _Relay, data_dir: str | None
    ) -> dict[str, Any]:
        from jobs import worker_child

        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=worker_child.main, args=(cfg, send, data_dir), name=f"ncloud-{launch.key}"
        )
        forking.start(proc)
        send.close()
        pid = launch.pid = int(proc.pid or 0)
        if launch.stop_asked:
            os.kill(pid, signal.SIGTERM)
        outcome: dict[str, Any] | None = None
        over_memory = 0
        while True:
            if recv.poll(0.2):
                try:
                    kind, value = recv.recv()
                except (EOFError, OSError):
                    proc.join(timeout=30)
                    break
                if kind == "done":
                    outcome = {"outcome": value.get("status", "completed"), **value}
                elif kind == "error":
                    outcome = {"outcome": "failed", "error": value}
                else:
                    relay.event(kind, value)
            elif not proc.is_alive():
                break
            if self.memory_limit and (used := _rss(pid)) > self.memory_limit:
                over_memory = used
                proc.kill()
                proc.join(timeout=30)
                break
            relay.flush()
        proc.join(timeout=30)
        if over_memory:
            return {
                "outcome": "failed",
                "error": f"out of memory: the worker used {format_size(over_memory)}, over its "
                f"{format_size(self.memory_limit)} share of the tenant's memory",
            }
        if outcome is not None:
            return outcome
        code = proc.exitcode
        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        return {"outcome": "crashed", "error": f"the training process died ({how})"}


class _Relay:
    """Buffers a child's events into the store: lines in batches, progress at most once a second."""

    def __init__(self, store: Any, run: models.Run, tenant_id: int, rank: int) -> None:
        self.store, self.run, self.tenant_id, self.rank = store, run, tenant_id, rank
        self.pending: list[str] = []
        self.flushed_at = 0.0
        self.progress: str | None = None
        self.progress_at = 0.0

    def line(self, text: str) -> None:
        self.pending.append(text if self.rank == 0 else f"[rank {self.rank}] {text}")

    def event(self, kind: str, value: Any) -> None:
        if kind == "started" and self.rank == 0:
            with contextlib.suppress(NcloudError):
                models.move(self.store, self.run.id, RunStatus.RUNNING, note=f"pid {value['pid']}")
        elif kind == "log":
            self.line(str(value))
        elif kind == "progress" and self.rank == 0:
            self.progress = str(value)
        elif kind == "epoch" and self.rank == 0:
            self.flush(force=True)
            metrics.record_epoch(self.store, self.run, self.tenant_id, value)
            self.line(_epoch_line(value))
        elif kind == "checkpoint" and self.rank == 0:
            self.line(f"checkpoint saved at epoch {value.get('epoch')}")

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.pending and (force or now - self.flushed_at > FLUSH_S):
            lines, self.pending = self.pending, []
            metrics.add_lines(self.store, self.run, self.tenant_id, lines)
            self.flushed_at = now
        if self.progress is not None and (force or now - self.progress_at > PROGRESS_S):
            models.update_run(self.store, self.run.id, progress=self.progress)
            self.progress, self.progress_at = None, now


def _epoch_line(m: dict[str, Any]) -> str:
    parts = [f"epoch {m.get('epoch')}: train loss {m.get('train_loss', 0):.4f}"]
    if m.get("valid_loss") is not None:
        parts.append(f"valid loss {m['valid_loss']:.4f}")
    if m.get("valid_accuracy") is not None:
        parts.append(f"valid accuracy {m['valid_accuracy']:.4f}")
    if m.get("samples_per_s") is not None:
        parts.append(f"{m['samples_per_s']:.0f} samples/s")
    return ", ".join(parts)
