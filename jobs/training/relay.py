"""What a training sandbox reports, checked before it reaches the store (the tenant wrote
it): its events relayed as log lines, progress and epoch metrics, and its final result."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from jobs.models import metrics
from jobs.models import state as models
from jobs.models.state import RunStatus
from jobs.training.config import Outcome
from ncloud.errors import NcloudError

FLUSH_S = 0.5
PROGRESS_S = 1.0
MAX_LINE = 8192


def outcome_of(raw: Any) -> dict[str, Any]:
    """What the run says it ended with, kept to the fields the scheduler reads, checked."""
    result = raw if isinstance(raw, dict) else {}
    status = result.get("status")
    done = result.get("epochs_done")
    if status not in (Outcome.COMPLETED, Outcome.STOPPED) or type(done) is not int or done < 0:
        return {"outcome": Outcome.FAILED, "error": "the run ended without a valid result"}
    return {
        "outcome": Outcome(status),
        "status": status,
        "epochs_done": done,
        "metrics": metrics_of(result.get("metrics")),
    }


class Relay:
    """Buffers a child's events into the store: lines in batches, progress at most once a second."""

    def __init__(self, store: Any, run: models.Run, tenant_id: int, rank: int) -> None:
        self.store, self.run, self.tenant_id, self.rank = store, run, tenant_id, rank
        self.pending: list[str] = []
        self.flushed_at = 0.0
        self.progress: str | None = None
        self.progress_at = 0.0
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            self.pending.append(text if self.rank == 0 else f"[rank {self.rank}] {text}")

    def event(self, kind: str, value: dict[str, Any], pid: int) -> None:
        """One event from the sandbox; what it says is checked, since the tenant wrote it."""
        if kind == "started" and self.rank == 0:
            with contextlib.suppress(NcloudError):
                models.move(self.store, self.run.id, RunStatus.RUNNING, note=f"pid {pid}")
        elif kind == "log":
            self.line(str(value.get("line"))[:MAX_LINE])
        elif kind == "progress" and self.rank == 0:
            self.progress = str(value.get("line"))[:MAX_LINE]
        elif kind == "epoch" and self.rank == 0:
            m = metrics_of(value.get("metrics"))
            if m is not None:
                self.flush(force=True)
                metrics.record_epoch(self.store, self.run, self.tenant_id, m)
                self.line(_epoch_line(m))
        elif kind == "checkpoint" and self.rank == 0:
            index = value.get("index")
            epoch = index.get("epoch") if isinstance(index, dict) else None
            self.line(f"checkpoint saved at epoch {epoch if type(epoch) is int else '?'}")

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.pending and (force or now - self.flushed_at > FLUSH_S):
            with self.lock:
                lines, self.pending = self.pending, []
            metrics.add_lines(self.store, self.run, self.tenant_id, lines)
            self.flushed_at = now
        if self.progress is not None and (force or now - self.progress_at > PROGRESS_S):
            models.update_run(self.store, self.run.id, progress=self.progress)
            self.progress, self.progress_at = None, now


def metrics_of(raw: Any) -> dict[str, Any] | None:
    """Epoch metrics as a run reports them: a small dict of numbers (or None), else None."""
    if not isinstance(raw, dict) or len(raw) > 64 or type(raw.get("epoch")) is not int:
        return None
    ok = all(
        isinstance(k, str) and len(k) <= 64 and (v is None or type(v) in (int, float))
        for k, v in raw.items()
    )
    return dict(raw) if ok else None


def _epoch_line(m: dict[str, Any]) -> str:
    parts = [f"epoch {m.get('epoch')}: train loss {m.get('train_loss') or 0:.4f}"]
    if m.get("valid_loss") is not None:
        parts.append(f"valid loss {m['valid_loss']:.4f}")
    if m.get("valid_accuracy") is not None:
        parts.append(f"valid accuracy {m['valid_accuracy']:.4f}")
    if m.get("samples_per_s") is not None:
        parts.append(f"{m['samples_per_s']:.0f} samples/s")
    return ", ".join(parts)
