"""The trusted workers' process group for a run of several workers, joined so a stop wins.

torch.distributed's own rendezvous (`init_process_group` with a tcp:// URL) blocks in
native code until every rank has come, for as long as its timeout: a run stopped while
one rank never arrives (it was stopped first, or its worker died) would hold the others,
and the tenant's slots, for that long. So each rank joins a TCPStore in short waits,
asking between them whether its launch was stopped, and forms the group on that store
only once the ranks have agreed to.

The agreement is one key, set once (compare-and-set, first writer wins): `formed` by a
rank that saw everyone there, `aborted` by a rank that was stopped first (or gave up
waiting). Every rank follows the key, whatever it wanted: a rank stopped a moment after
another saw everyone and went into the native rendezvous joins it too (and is then
stopped the usual way, through its sandbox), so no rank is ever left alone in there.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

POLL_S = 0.05  # how soon a waiting rank sees a stop, or the others
TIMEOUT_S = 600.0  # for every rank to come, and for each collective after
PREFIX = "ncloud/joined/"
DECIDED = "ncloud/decided"
FORMED, ABORTED = b"formed", b"aborted"


class Stopped(Exception):
    """The launch was stopped before its group formed (or another rank was, or left)."""


def join(dist_url: str, rank: int, world_size: int, stopped: Callable[[], bool]) -> Any:
    """Rank `rank` of `world_size` in a gloo group at dist_url (tcp://host:port, where rank
    0 listens); the collective that relays the sandboxes'. Stopped when the group was
    aborted first (this rank's `stopped()` turned true, or another's did); TimeoutError
    when the others do not all come within TIMEOUT_S."""
    import torch.distributed as dist

    from jobs.sandbox.collective import TorchCollective

    where = urlsplit(dist_url)
    if where.scheme != "tcp" or not where.hostname or not where.port:
        raise ValueError(f"a process group address is tcp://host:port, not {dist_url!r}")
    deadline = time.monotonic() + TIMEOUT_S
    store = _connect(dist, where.hostname, where.port, rank, world_size, stopped, deadline)
    try:
        store.set(f"{PREFIX}{rank}", "1")
        decision = _agree(store, world_size, stopped, deadline)
    except RuntimeError as exc:  # rank 0's store is gone: it left before the group formed
        raise Stopped(f"rank 0 left before the group formed ({exc})") from exc
    if decision != FORMED:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run's other workers did not come within {TIMEOUT_S:g}s")
        raise Stopped()
    store.set_timeout(datetime.timedelta(seconds=TIMEOUT_S))
    dist.init_process_group(
        "gloo",
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    return TorchCollective(world_size)


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _connect(
    dist: Any,
    host: str,
    port: int,
    rank: int,
    world_size: int,
    stopped: Callable[[], bool],
    deadline: float,
) -> Any:
    """Rank 0 listens; the others retry until it does (nothing is agreed yet: any may go)."""
    poll = datetime.timedelta(seconds=0.5)
    while True:
        if stopped():
            raise Stopped()
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 of the run did not listen within {TIMEOUT_S:g}s")
        try:
            return dist.TCPStore(host, port, world_size, rank == 0, poll, wait_for_workers=False)
        except RuntimeError:  # rank 0 does not listen yet
            if rank == 0:
                raise
            time.sleep(0.1)


def _agree(store: Any, world_size: int, stopped: Callable[[], bool], deadline: float) -> bytes:
    """The group's decision, FORMED or ABORTED, once some rank has made it."""
    everyone = [f"{PREFIX}{r}" for r in range(world_size)]
    while True:
        want = None
        if stopped() or time.monotonic() > deadline:
            want = ABORTED
        elif store.check(everyone):
            want = FORMED
        if want is not None:  # the first writer's value stands; the others read it back
            return bytes(store.compare_set(DECIDED, "", want))
        if store.check([DECIDED]):
            return bytes(store.get(DECIDED))
        time.sleep(POLL_S)
