"""The trusted workers' process group for a run of several workers, joined so a stop wins.

torch.distributed's own rendezvous (`init_process_group` with a tcp:// URL) blocks in
native code until every rank has come, for as long as its timeout: a run stopped while
one rank never arrives (it was stopped first, or its worker died) would hold the others,
and the tenant's slots, for that long. So each rank joins a TCPStore in short waits,
asking between them whether its launch was stopped, and forms the group on that store
once every rank has said it is there.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

POLL_S = 0.5  # how soon a waiting rank sees a stop
TIMEOUT_S = 600.0  # for every rank to come, and for each collective after
PREFIX = "ncloud/joined/"


class Stopped(Exception):
    """The launch was stopped before its group formed."""


def join(dist_url: str, rank: int, world_size: int, stopped: Callable[[], bool]) -> Any:
    """Rank `rank` of `world_size` in a gloo group at dist_url (tcp://host:port, where rank
    0 listens); the collective that relays the sandboxes'. Stopped when `stopped()` turns
    true first; TimeoutError when the others do not all come within TIMEOUT_S."""
    import torch.distributed as dist

    from jobs.sandbox.collective import TorchCollective

    where = urlsplit(dist_url)
    if where.scheme != "tcp" or not where.hostname or not where.port:
        raise ValueError(f"a process group address is tcp://host:port, not {dist_url!r}")
    deadline = time.monotonic() + TIMEOUT_S
    poll = datetime.timedelta(seconds=POLL_S)
    store = None
    while store is None:
        _check(stopped, deadline)
        try:
            store = dist.TCPStore(
                where.hostname, where.port, world_size, rank == 0, poll, wait_for_workers=False
            )
        except RuntimeError:  # rank 0 does not listen yet
            if rank == 0:
                raise
            time.sleep(0.1)
    store.set(f"{PREFIX}{rank}", "1")
    everyone = [f"{PREFIX}{r}" for r in range(world_size)]
    while True:
        _check(stopped, deadline)
        try:
            store.wait(everyone, poll)
            break
        except RuntimeError:  # not all there yet
            continue
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


def _check(stopped: Callable[[], bool], deadline: float) -> None:
    if stopped():
        raise Stopped()
    if time.monotonic() > deadline:
        raise TimeoutError(f"the run's other workers did not come within {TIMEOUT_S:g}s")
