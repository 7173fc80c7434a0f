"""The benchmarks' paired-ratio interval: what a verdict near 1.0 rests on."""

from __future__ import annotations

import math

from bench.common import ratio_interval


def test_a_steady_ratio_has_a_tight_interval_around_it() -> None:
    mean, low, high = ratio_interval([1.10, 1.11, 1.09, 1.10])
    assert low < mean < high
    assert low > 1.08 and high < 1.12
    assert math.isclose(mean, 1.10, rel_tol=1e-3)


def test_swinging_rounds_give_an_interval_that_spans_parity() -> None:
    _, low, high = ratio_interval([0.94, 0.96, 0.98, 0.92, 0.94, 1.20])
    assert low < 1.0 < high
    # the geometric mean: a round at 2x and one at 0.5x cancel out
    assert math.isclose(ratio_interval([2.0, 0.5])[0], 1.0)


def test_too_few_or_impossible_rounds_are_not_an_interval() -> None:
    for ratios in ([], [1.0], [1.0, 0.0], [1.0, -1.0]):
        assert all(math.isnan(v) for v in ratio_interval(ratios))
