"""A tenant's reservation as a Ray placement group: bundle shapes, fit checks, create and remove.

The bundle arithmetic is plain Python (unit-tested without Ray); only the functions at
the bottom touch Ray, and only the controller actor calls them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ncloud.errors import QuotaExceeded
from ncloud.validation import format_size

PG_PREFIX = "ncloud-tenant-"


@dataclass(frozen=True)
class Resources:
    cpus: float
    gpus: float
    memory: int

    def minus(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.gpus - other.gpus, self.memory - other.memory)

    def plus(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.gpus + other.gpus, self.memory + other.memory)

    def as_dict(self) -> dict[str, float]:
        return {"cpus": self.cpus, "gpus": self.gpus, "memory": self.memory}


def bundles_for(want: Resources) -> list[dict[str, float]]:
    """Bundle shapes for a reservation, so that training workers fit into them later.

    One bundle per GPU (with an even share of the CPUs) when there are GPUs, else one
    bundle per CPU; memory is split evenly. Left-over CPUs become one-CPU bundles.
    """
    gpus, cpus = int(want.gpus), int(want.cpus)
    shapes: list[dict[str, float]] = []
    if gpus > 0:
        per_gpu = max(cpus // gpus, 1)
        shapes = [{"CPU": float(per_gpu), "GPU": 1.0} for _ in range(gpus)]
        shapes += [{"CPU": 1.0} for _ in range(max(cpus - per_gpu * gpus, 0))]
    else:
        shapes = [{"CPU": 1.0} for _ in range(cpus)]
    if want.memory > 0:
        share, extra = divmod(want.memory, len(shapes))
        for i, shape in enumerate(shapes):
            shape["memory"] = float(share + (extra if i == 0 else 0))
    return shapes


def check_fit(
    want: Resources,
    total: Resources,
    reserved_by_others: Resources,
    grown: Resources | None = None,
) -> bool:
    """True when the cluster holds the reservation now, False when only the cluster the
    autoscaler may grow to does (`grown`); refuses at once, saying what is free, when
    neither does."""
    short = _short(want, total.minus(reserved_by_others))
    if short is None:
        return True
    if grown is not None and _short(want, grown.minus(reserved_by_others)) is None:
        return False
    label, have, asked = short
    raise QuotaExceeded(
        f"cluster has {have} {label} unreserved; tenant asks for {asked}"
        + (" (and the autoscaler cannot grow it that far)" if grown is not None else "")
    )


def _short(want: Resources, free: Resources) -> tuple[str, str, str] | None:
    """(what, how much is free, how much is asked) of the first thing that does not fit.
    A negative free memory means "not known" (node types that do not declare it)."""
    for label, asked, have, fmt in (
        ("CPUs", want.cpus, free.cpus, lambda v: f"{v:g}"),
        ("GPUs", want.gpus, free.gpus, lambda v: f"{v:g}"),
        ("memory", want.memory, free.memory, format_size),
    ):
        if asked > have and not (label == "memory" and have < 0):
            return label, fmt(max(have, 0)), fmt(asked)
    return None


def grown_total(config: Path) -> Resources | None:
    """The most the autoscaler may grow the cluster to: the head plus every worker node
    type at its max_workers, from the autoscaler's config; None without one. Memory counts
    only if every node type declares it (else it is "not known": -1)."""
    if not config.is_file():
        return None
    found = yaml.safe_load(config.read_text()) or {}
    types: dict[str, Any] = found.get("available_node_types") or {}
    cpus = gpus = 0.0
    memory, known = 0, True
    for name, node in types.items():
        count = 1 if name == found.get("head_node_type") else int(node.get("max_workers", 0))
        res = node.get("resources") or {}
        cpus += float(res.get("CPU", 0)) * count
        gpus += float(res.get("GPU", 0)) * count
        known = known and "memory" in res
        memory += int(res.get("memory", 0)) * count
    return Resources(cpus, gpus, memory if known else -(1 << 62))


def gpu_resources(group_id: str, bundle: int | None, gpus: int) -> dict[str, float]:
    """Ray resources that take `gpus` GPUs out of a placed reservation, for an actor that
    cannot be given a scheduling strategy (Serve gives its replicas none): the group's own
    GPU resource, and one bundle's as well when pinned to it. Ray assigns the GPU ids
    (CUDA_VISIBLE_DEVICES) from them as it does for a worker placed in the bundle."""
    found = {f"GPU_group_{group_id}": float(gpus)}
    if bundle is not None:
        found[f"GPU_group_{bundle}_{group_id}"] = float(gpus)
    return found


def cluster_total() -> Resources:
    import ray

    found = ray.cluster_resources()
    return Resources(
        float(found.get("CPU", 0)), float(found.get("GPU", 0)), int(found.get("memory", 0))
    )


def create(name: str, want: Resources, timeout_s: float = 30.0, wait: bool = True) -> None:
    """Create the placement group and wait until Ray has placed it, or remove it and refuse.
    Without `wait` it stays Pending: its demand is what makes the autoscaler add nodes."""
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group(bundles_for(want), strategy="PACK", name=name, lifetime="detached")
    if not wait:
        return
    try:
        import ray

        ray.get(group.ready(), timeout=timeout_s)
    except Exception as exc:
        remove_placement_group(group)
        raise QuotaExceeded(
            f"the cluster could not place reservation {name} ({want.as_dict()}) "
            f"within {timeout_s:g}s: {type(exc).__name__}"
        ) from exc


def remove(name: str) -> bool:
    from ray.util.placement_group import get_placement_group, remove_placement_group

    try:
        group = get_placement_group(name)
    except ValueError:
        return False
    remove_placement_group(group)
    return True


def existing() -> dict[str, dict[str, Any]]:
    """Every live ncloud placement group by name, with its Ray state and bundles."""
    from ray.util.placement_group import placement_group_table

    found: dict[str, dict[str, Any]] = {}
    for pg_id, info in placement_group_table().items():
        name = info.get("name", "")
        if name.startswith(PG_PREFIX) and info.get("state") != "REMOVED":
            found[name] = {"id": pg_id, **info}
    return found


def usage(pg_id: str) -> Resources:
    """What is in use now inside a placement group, from Ray's per-group resources."""
    import ray

    total, available = ray.cluster_resources(), ray.available_resources()

    def used(kind: str) -> float:
        key = f"{kind}_group_{pg_id}"
        return float(total.get(key, 0)) - float(available.get(key, 0))

    return Resources(used("CPU"), used("GPU"), int(used("memory")))


def wait_removed(name: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while name in existing() and time.monotonic() < deadline:
        time.sleep(0.1)
