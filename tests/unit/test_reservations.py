"""Bundle shapes and the fit check, without Ray."""

from __future__ import annotations

import pytest

from cluster.core.reservations import Resources, bundles_for, check_fit
from ncloud.errors import QuotaExceeded


def test_cpu_only_gets_one_bundle_per_cpu_with_memory_split() -> None:
    shapes = bundles_for(Resources(2, 0, 4 << 30))
    assert shapes == [{"CPU": 1.0, "memory": float(2 << 30)}] * 2


def test_gpus_get_a_bundle_each_with_a_cpu_share() -> None:
    shapes = bundles_for(Resources(5, 2, 0))
    assert shapes == [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0}]
    assert sum(s["CPU"] for s in shapes) == 5


def test_refused_with_what_is_free() -> None:
    total, others = Resources(4, 0, 8 << 30), Resources(2, 0, 0)
    check_fit(Resources(2, 0, 1 << 30), total, others)
    with pytest.raises(QuotaExceeded, match="cluster has 2 CPUs unreserved; tenant asks for 4"):
        check_fit(Resources(4, 0, 0), total, others)
    with pytest.raises(QuotaExceeded, match="GPUs"):
        check_fit(Resources(1, 1, 0), total, others)
    with pytest.raises(QuotaExceeded, match="memory"):
        check_fit(Resources(1, 0, 9 << 30), total, others)


def test_gpu_resources_name_the_group_and_a_pinned_bundle() -> None:
    from cluster.core.reservations import gpu_resources

    assert gpu_resources("ab12", None, 2) == {"GPU_group_ab12": 2.0}
    assert gpu_resources("ab12", 3, 1) == {"GPU_group_ab12": 1.0, "GPU_group_3_ab12": 1.0}
