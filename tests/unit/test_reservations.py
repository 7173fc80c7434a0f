"""Bundle shapes and the fit check, without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.core.reservations import Resources, bundles_for, check_fit, grown_total
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


def test_a_reservation_that_fits_only_a_grown_cluster_waits_for_it() -> None:
    total, others = Resources(4, 0, 8 << 30), Resources(2, 0, 0)
    grown = Resources(8, 1, -(1 << 62))  # node types that do not declare memory
    assert check_fit(Resources(2, 0, 1 << 30), total, others, grown) is True
    assert check_fit(Resources(5, 1, 64 << 30), total, others, grown) is False
    with pytest.raises(QuotaExceeded, match="autoscaler cannot grow it that far"):
        check_fit(Resources(7, 0, 0), total, others, grown)
    with pytest.raises(QuotaExceeded, match="2 CPUs unreserved"):
        check_fit(Resources(3, 0, 0), total, others)  # no autoscaler: now or never


def test_how_far_the_autoscaler_may_grow_is_read_from_its_node_types(tmp_path: Path) -> None:
    assert grown_total(tmp_path / "none.yaml") is None
    ours = grown_total(Path(__file__).resolve().parents[2] / "cluster.yaml")
    assert ours is not None
    assert (ours.cpus, ours.gpus) == (4 + 8 * 4, 4) and ours.memory < 0  # memory: not said
    declared = tmp_path / "a.yaml"
    declared.write_text(
        "head_node_type: h\navailable_node_types:\n"
        "  h: {resources: {CPU: 2, memory: 100}, max_workers: 0}\n"
        "  w: {resources: {CPU: 1, memory: 10}, max_workers: 3}\n"
    )
    assert grown_total(declared) == Resources(5, 0, 130)
