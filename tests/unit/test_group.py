"""Joining the workers' process group (jobs.training.group): a stop is seen while waiting."""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from jobs.training import group
from tests.s3 import free_port


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_waiting_for_the_others_sees_its_stop(rank: int) -> None:
    """Rank 0 listens and nobody comes; rank 1 finds nobody listening. Either way the wait
    ends with Stopped, not with a TimeoutError at the end of the group's timeout."""
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    with pytest.raises(group.Stopped):
        group.join(f"tcp://127.0.0.1:{free_port()}", rank, 2, stopped=stop.is_set)


def test_a_bad_address_is_refused() -> None:
    with pytest.raises(ValueError, match="tcp://host:port"):
        group.join("file:///tmp/x", 0, 2, stopped=lambda: False)


JOINED = -1.0  # a stop that comes the moment this rank has said it is there


def _stopper(port: int, rank: int, at: float) -> Callable[[], bool]:
    """stopped() for one join: true `at` seconds after it began, or (JOINED) once the
    rank's own key is in the group's store, seen through a connection of its own."""
    begun = time.monotonic()
    if at != JOINED:
        return lambda: time.monotonic() - begun > at
    import torch.distributed as dist

    seen: list[Any] = []

    def stopped() -> bool:
        try:
            if not seen:
                poll = datetime.timedelta(seconds=0.2)
                seen.append(dist.TCPStore("127.0.0.1", port, 2, False, poll))
            return bool(seen[0].check([f"{group.PREFIX}{rank}"]))
        except RuntimeError:  # rank 0 does not listen yet
            return False

    return stopped


def _rank(
    rank: int, ports: list[int], stops: list[tuple[float, float]], out: Any, together: Any
) -> None:
    """One rank, in its own process, joining one group per port in turn (both ranks begin
    each join together); join i is stopped `stops[i][rank]` seconds after it began. What
    each join ended as goes to out."""
    for port, when in zip(ports, stops, strict=True):
        together.wait(60)
        try:
            group.join(f"tcp://127.0.0.1:{port}", rank, 2, _stopper(port, rank, when[rank]))
        except group.Stopped:
            out.put((rank, port, "stopped"))
            continue
        out.put((rank, port, "formed"))
        group.leave()


def test_a_stop_racing_the_group_forming_never_leaves_a_rank_inside() -> None:
    """One rank is stopped at moments around the one when both are there (or just after
    it said it is there), the other a little later: a stop reaches every rank of a run,
    not all at once. Whatever the moments, both ranks end the same way (both formed, or
    both stopped), and soon: the old join let a rank back out after the other had gone
    into the native rendezvous, which then held it (and the run's slots) for the group's
    whole timeout."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    firsts = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5]
    stops = [(t, t + 0.4) for t in firsts] + [(t + 0.4, t) for t in firsts]
    stops += [(JOINED, 2.0), (2.0, JOINED), (30.0, 30.0)]
    ports = [free_port() for _ in stops]
    together = ctx.Barrier(2)
    procs = [ctx.Process(target=_rank, args=(r, ports, stops, out, together)) for r in (0, 1)]
    for p in procs:
        p.start()
    ended: dict[tuple[int, int], str] = {}
    try:
        deadline = time.monotonic() + 120
        while len(ended) < 2 * len(ports) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                rank, port, how = out.get(timeout=1)
                ended[(rank, port)] = how
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert len(ended) == 2 * len(ports), f"a rank was left waiting: {ended}"
    for port in ports:
        assert ended[(0, port)] == ended[(1, port)], (port, ended)
    assert ended[(0, ports[-1])] == "formed"  # not stopped in time: the group formed
    assert ended[(0, ports[0])] == "stopped"  # stopped at once: nothing formed
