"""A replica admits an input only when it would be answered within the budget."""

from __future__ import annotations

from serve.deployments.admission import Drain


def test_an_idle_replica_admits_and_with_no_rate_yet_takes_one_batch() -> None:
    drain = Drain()
    assert drain.admits(0, 500, unknown=32)  # an empty queue takes any one request
    assert drain.wait_s(10, now=0.0) is None
    assert drain.admits(16, 16, unknown=32) and not drain.admits(16, 17, unknown=32)


def test_the_rate_is_what_it_answered_while_busy() -> None:
    drain = Drain(window_s=2.0)
    drain.answered(1, still_waiting=5, now=10.0)  # the first answer starts the clock
    for i in range(1, 11):
        drain.answered(1, still_waiting=5, now=10.0 + i * 0.01)  # 100 inputs/s while busy
    assert abs((drain.wait_s(50, now=10.1) or 0) - 0.5) < 1e-6
    assert drain.admits(20, 10, unknown=1, now=10.1)  # 0.3 s of work: within the budget
    assert not drain.admits(100, 1, unknown=1000, now=10.1)  # a second's work is over the budget


def test_time_spent_idle_is_not_counted_as_slowness() -> None:
    drain = Drain(window_s=2.0)
    drain.answered(1, still_waiting=0, now=10.0)  # then nothing waited for a while
    drain.answered(1, still_waiting=3, now=11.5)
    assert drain.wait_s(100, now=11.5) is None  # the idle gap says nothing about speed
    drain.answered(3, still_waiting=0, now=11.53)
    assert abs((drain.wait_s(100, now=11.6) or 0) - 1.0) < 1e-6


def test_old_answers_age_out() -> None:
    drain = Drain(window_s=2.0)
    drain.answered(1, still_waiting=1, now=0.0)
    drain.answered(1, still_waiting=1, now=1.0)  # a slow stretch: 1 input/s
    assert drain.wait_s(1, now=1.5) == 1.0
    assert drain.wait_s(1, now=3.5) is None


def test_after_a_quiet_spell_the_last_rate_seen_still_admits_a_burst() -> None:
    drain = Drain(window_s=2.0)
    drain.answered(1, still_waiting=1, now=0.0)
    for i in range(1, 101):
        drain.answered(1, still_waiting=1, now=i * 0.001)  # 1,000 inputs/s while busy
    drain.answered(1, still_waiting=0, now=0.2)
    assert drain.wait_s(1, now=10.0) is None  # nothing recent
    assert drain.admits(100, 28, unknown=32, now=10.0)  # 0.13 s at the last rate seen
    assert not drain.admits(600, 1, unknown=32, now=10.0)  # 0.6 s: over the budget
    fresh = Drain(window_s=2.0)
    assert not fresh.admits(100, 28, unknown=32, now=10.0)  # never measured: one batch
