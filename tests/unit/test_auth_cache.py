"""The deployed model's cache of recently checked Authorization headers."""

from __future__ import annotations

import pytest

from serve import deployments
from serve.deployments import AuthCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(deployments.time, "monotonic", c)
    return c


def test_a_remembered_header_is_fresh_until_the_ttl_passes(clock: Clock) -> None:
    cache = AuthCache(ttl_s=1.0)
    assert not cache.fresh("Bearer a")
    cache.remember("Bearer a")
    assert cache.fresh("Bearer a")
    assert not cache.fresh("Bearer b")
    clock.now += 0.99
    assert cache.fresh("Bearer a")
    clock.now += 0.02
    assert not cache.fresh("Bearer a")  # a revoked token is checked again, and refused


def test_the_cache_stays_bounded_and_keeps_live_entries_when_it_can(clock: Clock) -> None:
    cache = AuthCache(ttl_s=1.0, size=3)
    cache.remember("old")
    clock.now += 2
    cache.remember("a")
    cache.remember("b")
    cache.remember("c")  # full: the expired entry goes, the live ones stay
    assert all(cache.fresh(h) for h in ("a", "b", "c"))
    cache.remember("d")  # full of live entries: start over rather than grow
    assert cache.fresh("d") and not cache.fresh("a")


def test_headers_are_kept_as_hashes_not_as_tokens(clock: Clock) -> None:
    cache = AuthCache(ttl_s=1.0)
    cache.remember("Bearer nc_secret")
    assert all(b"nc_secret" not in key for key in cache._until)
