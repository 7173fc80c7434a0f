"""The scheduler's view of Ray around its pool of workers: a launched run's workers and
what they answered, worker names, killing one, whether a tenant's reservation is placed
and whether a worker died with its node."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util import placement_group_table
from ray.util.placement_group import get_placement_group

from cluster.core.names import NAMESPACE


@dataclass
class Active:
    """A launched run as this controller sees it: one wait() reference per worker."""

    run_id: int
    key: str
    actors: list[Any]
    refs: dict[Any, int] = field(default_factory=dict)  # wait ref -> rank
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    stopping: bool = False
    unreachable: dict[int, float] = field(default_factory=dict)  # rank -> when to ask again
    stop_by: float | None = None  # monotonic time by which every stopped rank must answer

    def stop_within(self, seconds: float) -> None:
        """Note a stop sent now: a rank still silent `seconds` after it is killed."""
        by = time.monotonic() + seconds
        self.stop_by = by if self.stop_by is None else min(self.stop_by, by)

    def overdue(self) -> list[int]:
        """The ranks that have not answered a stop in time (stuck in native code, say)."""
        if self.stop_by is None or time.monotonic() < self.stop_by:
            return []
        return sorted({*self.refs.values(), *self.unreachable})


# What Ray says of an actor whose node went away (the GCS's ActorDiedErrorContext).
NODE_DIED = "its node has died"


def worker_name(placement_group: str, index: int) -> str:
    return f"ncloud-worker-{placement_group}-b{index}"


def kill_worker(name: str) -> bool:
    """Stop a pool worker by name (also one a previous controller made); False if none."""
    try:
        worker = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    ray.kill(worker, no_restart=True)
    return True


def wait_released(name: str, timeout_s: float = 30.0) -> None:
    """Until a killed actor's name is free, so the next worker made by it is a new one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.1)
    raise RuntimeError(f"pool worker {name} was still registered {timeout_s:g}s after ray.kill")


def node_lost(exc: BaseException) -> bool:
    """Whether a worker died with its node (not by itself): its run owes no restart."""
    return isinstance(exc, ray.exceptions.RayActorError) and NODE_DIED in str(exc)


def reservation_placed(placement_group: str) -> bool:
    """Whether every bundle of the reservation is placed (not pending, not rescheduling
    after a node was lost): only then may a run start on it."""
    try:
        table = placement_group_table(get_placement_group(placement_group))
    except ValueError:  # no such group (yet)
        return False
    return bool(table.get("state") == "CREATED")
