"""Failed authentication is throttled; a token that passed is remembered, as a hash."""

from __future__ import annotations

import pytest

from ncloud.errors import TooManyRequests, Unauthenticated
from serve import throttle
from serve.throttle import AuthCache, FailedAuth, token_id


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(throttle.time, "monotonic", c)
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


def _refused() -> str:
    raise Unauthenticated("invalid token")


def _user() -> str:
    return "user"


def test_the_token_id_is_the_public_part_of_a_token() -> None:
    assert token_id("Bearer nc_abc123_secret") == "abc123"
    assert token_id("Bearer ncd_7_secret") == "7"
    assert token_id("Bearer nope") is None and token_id("") is None


def test_past_the_limit_an_address_is_429_until_its_oldest_failure_is_a_minute_old(
    clock: Clock,
) -> None:
    guard = FailedAuth(limit=3)
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            guard.check("10.0.0.1", "Bearer nc_x_wrong", _refused)
        clock.now += 1
    with pytest.raises(TooManyRequests, match="over 3 a minute; retry after 57 s") as told:
        guard.check("10.0.0.1", "Bearer nc_y_other", _user)  # refused before it is checked
    assert told.value.retry_after_s == 57 and told.value.http_status == 429
    assert guard.check("10.0.0.2", "Bearer nc_z_good", _user) == "user"  # another address
    clock.now += 57
    assert guard.check("10.0.0.1", "Bearer nc_y_other", _user) == "user"


def test_a_token_id_guessed_from_many_addresses_is_throttled_for_everyone(clock: Clock) -> None:
    guard = FailedAuth(limit=2)
    for address in ("a", "b"):
        with pytest.raises(Unauthenticated):
            guard.check(address, "Bearer nc_victim_guess", _refused)
    with pytest.raises(TooManyRequests):
        guard.check("c", "Bearer nc_victim_again", _refused)


def test_a_header_that_passed_is_not_slowed_by_the_failures_of_others(clock: Clock) -> None:
    guard = FailedAuth(limit=2)
    assert guard.check("shared", "Bearer nc_me_right", _user) == "user"
    for _ in range(5):
        with pytest.raises((Unauthenticated, TooManyRequests)):
            guard.check("shared", "Bearer nc_me_wrong", _refused)
    assert guard.check("shared", "Bearer nc_me_right", _user) == "user"
    with pytest.raises(TooManyRequests):
        guard.check("shared", "Bearer nc_new_unseen", _user)


def test_no_token_at_all_is_401_and_never_counted(clock: Clock) -> None:
    guard = FailedAuth(limit=1)
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            guard.check("10.0.0.1", "", _refused)
    assert guard.check("10.0.0.1", "Bearer nc_a_b", _user) == "user"


def test_the_keys_it_keeps_are_bounded(clock: Clock) -> None:
    guard = FailedAuth(limit=5, max_keys=10)
    for i in range(100):
        with pytest.raises(Unauthenticated):
            guard.check(f"10.0.0.{i}", f"Bearer nc_{i}_y", _refused)
    assert len(guard._failures) <= 10
