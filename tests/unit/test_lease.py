"""One control plane per store: the lease that `server start` claims and the controller
renews (on SQLite and on PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.control import lease
from cluster.core.store import Store
from ncloud.errors import Conflict


def test_a_second_owner_is_refused_while_the_lease_is_fresh(store: Store) -> None:
    lease.claim(store, "a")
    lease.claim(store, "a")  # its own restart
    with pytest.raises(Conflict, match="another ncloud control plane"):
        lease.claim(store, "b")
    assert lease.renew(store, "a") and not lease.renew(store, "b")
    lease.release(store, "b")  # not b's to give back: nothing happens
    with pytest.raises(Conflict):
        lease.claim(store, "b")
    lease.release(store, "a")
    lease.claim(store, "b")
    assert not lease.renew(store, "a")


def test_a_stale_lease_is_taken_over(store: Store) -> None:
    lease.claim(store, "a")
    lease.claim(store, "b", stale_s=0)  # a's head died without stopping
    assert lease.renew(store, "b") and not lease.renew(store, "a")


def test_the_owner_is_the_same_for_the_same_home(tmp_path: Path) -> None:
    first = lease.owner_id(tmp_path / "home")
    assert first == lease.owner_id(tmp_path / "home") != lease.owner_id(tmp_path / "other")
