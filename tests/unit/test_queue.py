"""Queue admission rules (jobs.training.queue) and the run state machine
(jobs.models.state), without Ray."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cluster.control import schema
from cluster.core import accounts
from jobs.models import metrics
from jobs.models import state as models
from jobs.models.options import TrainOptions
from jobs.models.state import RunStatus
from jobs.training.queue import Request, admit, check_request
from ncloud.errors import Conflict, NotFound, QuotaExceeded

CPU = {"CPU": 1.0}
GPU = {"CPU": 2.0, "GPU": 1.0}


def test_runs_start_in_order_while_they_fit() -> None:
    out = admit([CPU, CPU], set(), [Request(1, 1, 0), Request(2, 1, 0), Request(3, 1, 0)])
    assert out.started == {1: [0], 2: [1]}
    assert out.waiting[3] == "needs 1 free worker slot(s); 0 of 2 free"


def test_a_run_that_does_not_fit_holds_back_the_ones_behind_it() -> None:
    out = admit([CPU, CPU], {0}, [Request(1, 2, 0), Request(2, 1, 0), Request(3, 1, 0)])
    assert out.started == {}
    assert out.waiting[1].startswith("needs 2 free worker slot(s)")
    assert out.waiting[2] == out.waiting[3] == "behind earlier runs in the tenant's queue"


def test_gpu_workers_take_gpu_bundles_and_cpu_workers_prefer_cpu_ones() -> None:
    out = admit([GPU, CPU], set(), [Request(1, 1, 0), Request(2, 1, 1)])
    assert out.started == {1: [1], 2: [0]}


def test_a_request_larger_than_the_reservation_is_refused() -> None:
    check_request("t", [CPU, CPU], 2, 0)
    with pytest.raises(QuotaExceeded, match="3 worker"):
        check_request("t", [CPU, CPU], 3, 0)
    with pytest.raises(QuotaExceeded, match="1 GPU"):
        check_request("t", [CPU, CPU], 1, 1)
    with pytest.raises(QuotaExceeded):
        check_request("t", [GPU], 1, 2)


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = schema.open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    accounts.create_tenant(s, "t", 2, 0, 0)
    return s


def _model(store, name: str = "m", priority: int = 0):  # type: ignore[no-untyped-def]
    opts = TrainOptions(epochs=3, batch_size=8, priority=priority)
    return models.create(store, "t", name, "net.yaml", "layers: []", 1, None, None, opts)


def test_the_run_state_machine_is_enforced_and_timestamped(store) -> None:  # type: ignore[no-untyped-def]
    model, run = _model(store)
    assert run.status is RunStatus.QUEUED and run.attempt == 1
    with pytest.raises(Conflict):
        models.move(store, run.id, RunStatus.RUNNING)
    models.move(store, run.id, RunStatus.STARTING, placement=[0])
    running = models.move(store, run.id, RunStatus.RUNNING)
    assert running.started_at is not None
    done = models.move(store, run.id, RunStatus.COMPLETED)
    assert done.ended_at is not None and [h[0] for h in done.history] == [
        "Queued",
        "Starting",
        "Running",
        "Completed",
    ]
    for to in RunStatus:
        with pytest.raises(Conflict):
            models.move(store, run.id, to)
    again = models.new_attempt(store, "t", model.id, 5, None, 3, "resumed from epoch 3")
    assert again.attempt == 2 and again.status is RunStatus.QUEUED and again.epochs_done == 3
    with pytest.raises(Conflict, match="stop it before resuming"):
        models.new_attempt(store, "t", model.id, 5, None, 3, "resumed from epoch 3")


def test_queue_order_is_priority_then_submission(store) -> None:  # type: ignore[no-untyped-def]
    _, a = _model(store, "a")
    _, b = _model(store, "b", priority=5)
    _, c = _model(store, "c")
    order = [r.id for r in models.runs_in(store, {RunStatus.QUEUED})]
    assert order == [b.id, a.id, c.id]


def test_a_redone_epoch_replaces_its_metrics(store) -> None:  # type: ignore[no-untyped-def]
    model, run = _model(store)
    tenant_id = accounts.get_tenant(store, "t").id
    for epoch in (1, 2, 3):
        metrics.record_epoch(store, run, tenant_id, {"epoch": epoch, "train_loss": 1.0 / epoch})
    metrics.record_epoch(store, run, tenant_id, {"epoch": 2, "train_loss": 0.4})
    found = metrics.epochs(store, "t", model.id)
    assert [m["epoch"] for m in found] == [1, 2] and found[1]["train_loss"] == 0.4


def test_the_store_keeps_only_valid_custom_metrics(store) -> None:  # type: ignore[no-untyped-def]
    """What a sandbox sends is the tenant's: names and values are checked again here."""
    model, run = _model(store)
    sent = {
        "epoch": 1,
        "train_loss": 0.5,
        "epoch_s": 0.1,
        "acc_top5": 0.9,
        "count": 7,
        "bad name": 1.0,  # what report() would refuse, sent anyway
        "attempt": 99,
        "inf": math.inf,
    }
    metrics.record_epoch(store, run, accounts.get_tenant(store, "t").id, sent)
    assert metrics.epochs(store, "t", model.id) == [
        {
            "epoch": 1,
            "attempt": run.attempt,
            "train_loss": 0.5,
            "valid_loss": None,
            "valid_accuracy": None,
            "samples_per_s": None,
            "epoch_s": 0.1,
            "acc_top5": 0.9,
            "count": 7.0,
        }
    ]


def test_a_run_is_metered_from_starting_to_its_end_with_its_bundles(store) -> None:  # type: ignore[no-untyped-def]
    from cluster.core import usage
    from jobs.models import accounting

    accounts.resize_tenant(store, "t", 2, 0, 4 << 30)
    model, run = _model(store)
    models.move(store, run.id, RunStatus.STARTING, placement=[1])
    models.move(store, run.id, RunStatus.RUNNING)
    live = accounting.report(store, "t", None)["items"]
    assert [(i["kind"], i["model"], i["running"]) for i in live] == [("run", model.id, True)]
    models.move(store, run.id, RunStatus.COMPLETED)
    (period,) = usage.periods(store, None, None)
    assert period.ended_at is not None and period.attempt == run.attempt
    assert (period.cpus, period.gpus, period.memory) == (1.0, 0.0, 2 << 30)  # one of 2 bundles
    (item,) = accounting.report(store, "t", None)["items"]
    assert not item["running"] and item["periods"] == 1 and item["name"] == "m"
    assert item["cpu_hours"] == pytest.approx(item["held_s"] / 3600)
    # since: the part held after it, none once it ended before; a tenant's removal forgets it.
    assert accounting.report(store, "t", period.ended_at)["items"] == []
    half = period.started_at + (period.ended_at - period.started_at) / 2
    assert period.held_s(half, period.ended_at) == pytest.approx(
        (period.ended_at - half).total_seconds()
    )
    schema.delete_tenant(store, "t", force=True)
    assert usage.periods(store, None, None) == []


def test_removing_a_tenant_removes_its_models(store) -> None:  # type: ignore[no-untyped-def]
    model, run = _model(store)
    metrics.add_lines(store, run, accounts.get_tenant(store, "t").id, ["hello"])
    with pytest.raises(Conflict):
        schema.delete_tenant(store, "t", force=False)
    schema.delete_tenant(store, "t", force=True)
    assert metrics.lines(store, "t", model.id) == []


def test_run_metric_and_log_queries_answer_only_for_the_models_tenant(store) -> None:  # type: ignore[no-untyped-def]
    model, run = _model(store)
    t = accounts.get_tenant(store, "t").id
    metrics.record_epoch(store, run, t, {"epoch": 1, "train_loss": 1.0})
    metrics.add_lines(store, run, t, ["secret"])
    accounts.create_tenant(store, "u", 1, 0, 0)
    assert models.latest_run(store, "t", model.id).id == run.id
    with pytest.raises(NotFound):
        models.latest_run(store, "u", model.id)
    assert models.list_runs(store, "u", model.id) == []
    assert metrics.epochs(store, "u", model.id) == []
    assert metrics.lines(store, "u", model.id) == []
    assert [x["line"] for x in metrics.lines(store, "t", model.id)] == ["secret"]


def test_only_a_worker_that_died_with_its_node_owes_no_restart() -> None:
    from ray.exceptions import RayActorError

    from jobs.training.pool import node_lost

    with_node = RayActorError("ab", "The actor died because its node has died. Node Id: ab")
    assert node_lost(with_node)
    assert not node_lost(RayActorError("ab", "The actor died unexpectedly (SIGKILL)"))
    assert not node_lost(RuntimeError("its node has died"))  # not Ray's word for it


def test_what_a_tick_reads_is_each_tenants_own(store) -> None:  # type: ignore[no-untyped-def]
    from jobs.models import deployments
    from jobs.training.waiting import read_waiting_across_tenants

    model, run = _model(store)
    accounts.create_tenant(store, "u", 1, 0, 0)
    assert [r.id for r in models.tenant_runs_in(store, "t", {RunStatus.QUEUED})] == [run.id]
    assert models.tenant_runs_in(store, "u", {RunStatus.QUEUED}) == []
    (waiting,) = read_waiting_across_tenants(store)
    assert waiting.tenant.name == "t" and [r.id for r in waiting.runs] == [run.id]
    assert waiting.busy == set() and model.id in waiting.options
    models.move(store, run.id, RunStatus.STARTING, placement=[0])
    assert read_waiting_across_tenants(store) == []
    assert deployments.bundles_in_use_across_tenants(store) == {"t": {0}}
    assert deployments.training_bundles(store, "u") == set()
    assert deployments.training_bundles(store, "t") == {0}


def test_a_rank_silent_past_its_stop_deadline_is_overdue(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What the scheduler kills after a stop: the ranks that have not answered by the
    earliest deadline it set (a wait() outstanding, or out of reach), and only then."""
    from jobs.training import pool

    now = [100.0]
    monkeypatch.setattr(pool.time, "monotonic", lambda: now[0])
    active = pool.Active(1, "k", ["w0", "w1", "w2"])
    active.refs = {"ref0": 0, "ref2": 2}
    active.unreachable = {1: 0.0}
    assert active.overdue() == []  # nothing asked to stop
    active.stop_within(75.0)
    active.stop_within(50.0)  # a later, shorter stop wins
    active.stop_within(90.0)
    now[0] = 149.0
    assert active.overdue() == []
    now[0] = 150.0
    assert active.overdue() == [0, 1, 2]
    active.refs.pop("ref0")
    active.unreachable.clear()
    assert active.overdue() == [2]  # rank 0 answered; rank 1 is back in reach and answered


def test_the_tenants_that_ran_last_come_first_and_only_n_of_them(store) -> None:  # type: ignore[no-untyped-def]
    for name in ("u", "v", "w"):
        accounts.create_tenant(store, name, 1, 0, 0)
    opts = TrainOptions(epochs=1, batch_size=8)
    for tenant, name in (("t", "a"), ("u", "b"), ("v", "c"), ("t", "d")):
        models.create(store, tenant, name, "net.yaml", "layers: []", 1, None, None, opts)
    assert models.recent_tenants(store, 2) == ["t", "v"]  # w never ran: not warmed at all
    assert models.recent_tenants(store, 10) == ["t", "v", "u"]
