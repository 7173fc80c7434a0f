"""Queue admission for one tenant: which runs start now, in which bundles, and why others wait.

Plain Python (no Ray, no store) so the rules are unit-tested directly. A worker takes one
whole bundle of the tenant's reservation: a bundle with at least the worker's GPUs. Runs
are taken in order (priority, then submission) and strictly: a run that does not fit holds
back the runs behind it, so a big run is never starved by a stream of small ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ncloud.errors import QuotaExceeded

Bundle = dict[str, float]


@dataclass(frozen=True)
class Request:
    run_id: int
    workers: int
    gpus: int  # per worker


@dataclass
class Admission:
    started: dict[int, list[int]] = field(default_factory=dict)  # run id -> bundle per worker
    waiting: dict[int, str] = field(default_factory=dict)  # run id -> reason


def _fits(bundle: Bundle, gpus: int) -> bool:
    return bundle.get("CPU", 0) >= 1 and bundle.get("GPU", 0) >= gpus


def check_request(tenant: str, bundles: Sequence[Bundle], workers: int, gpus: int) -> None:
    """Refuse at once a run that could never start in this reservation, saying what there is."""
    usable = [b for b in bundles if _fits(b, gpus)]
    if len(usable) < workers:
        total_gpus = sum(b.get("GPU", 0) for b in bundles)
        what = f"{workers} worker(s) with {gpus} GPU(s) each" if gpus else f"{workers} worker(s)"
        raise QuotaExceeded(
            f"tenant {tenant!r} reserves {len(bundles)} worker slot(s) and {total_gpus:g} GPU(s) "
            f"in all; this run asks for {what}: ask an admin to resize the tenant"
        )


def pick(bundles: Sequence[Bundle], busy: set[int], workers: int, gpus: int) -> list[int] | None:
    """Free bundles for every worker, preferring the smallest that fit (GPU bundles last)."""
    free = [i for i, b in enumerate(bundles) if i not in busy and _fits(b, gpus)]
    free.sort(key=lambda i: (bundles[i].get("GPU", 0), i))
    return free[:workers] if len(free) >= workers else None


def admit(bundles: Sequence[Bundle], busy: set[int], queue: Sequence[Request]) -> Admission:
    """Start runs from the head of the queue while they fit; give every other run its reason."""
    out = Admission()
    taken = set(busy)
    blocked_by: int | None = None
    for req in queue:
        if blocked_by is None:
            chosen = pick(bundles, taken, req.workers, req.gpus)
            if chosen is not None:
                out.started[req.run_id] = chosen
                taken.update(chosen)
                continue
            blocked_by = req.run_id
            free = len([i for i in range(len(bundles)) if i not in taken])
            out.waiting[req.run_id] = (
                f"needs {req.workers} free worker slot(s)"
                + (f" with {req.gpus} GPU(s)" if req.gpus else "")
                + f"; {free} of {len(bundles)} free"
            )
            continue
        # The same words however the queue moves, so a long queue costs no writes per tick.
        out.waiting[req.run_id] = "behind earlier runs in the tenant's queue"
    return out
