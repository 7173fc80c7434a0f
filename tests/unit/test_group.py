"""Joining the workers' process group (jobs.training.group): a stop is seen while waiting."""

from __future__ import annotations

import threading

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
