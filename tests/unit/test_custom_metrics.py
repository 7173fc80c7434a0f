"""ncloud.training.report, and what the store keeps of what a (hostile) sandbox sends."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from ncloud import training


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    training.take()
    training._names.clear()
    yield
    training.take()
    training._names.clear()


def test_the_last_value_of_each_name_in_an_epoch_is_taken_once() -> None:
    training.report(a=1, b=2.5)
    training.report(a=3)
    assert training.take() == {"a": 3.0, "b": 2.5}
    assert training.take() == {}


def test_tensors_and_numpy_scalars_are_numbers() -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    training.report(t=torch.tensor(0.25), n=np.float32(2.0), i=np.int64(4))
    assert training.take() == {"t": 0.25, "n": 2.0, "i": 4.0}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"train_loss": 1.0}, "not one of"),
        ({"epoch": 1}, "not one of"),
        ({"9lives": 1.0}, "not a digit first"),
        ({"x" * 49: 1.0}, "1-48"),
        ({"ok": "high"}, "needs a number, not str"),
        ({"ok": True}, "not a bool"),
        ({"ok": math.nan}, "finite"),
        ({"ok": math.inf}, "finite"),
        ({"ok": [1.0]}, "needs a number, not list"),
    ],
)
def test_bad_names_and_values_raise_and_record_nothing(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        training.report(**values)
    assert training.take() == {}


def test_a_run_reports_at_most_so_many_names() -> None:
    training.report(**{f"m{i}": i for i in range(training.MAX_METRICS)})
    training.report(m0=5)  # a name already seen is no new one
    with pytest.raises(ValueError, match=f"at most {training.MAX_METRICS}"):
        training.report(one_more=1)


def test_the_dashboard_and_the_pictures_chart_each_custom_metric(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ncloud import plots
    from serve.ui import charts

    rows = [
        {"epoch": e, "attempt": 1, "train_loss": 1 / e, "valid_loss": None,
         "valid_accuracy": 0.5 + e / 10, "samples_per_s": 9.0, "epoch_s": 1.0, "sparsity": e / 4}
        for e in (1, 2, 3)
    ]  # fmt: skip
    figures = charts.run_charts("net", rows)
    assert [f["id"] for f in figures] == ["loss", "accuracy", "custom-sparsity"]
    assert figures[0]["data"][1]["x"] == []  # no validation loss: an empty line, not zeros
    assert figures[2]["data"][0]["y"] == [0.25, 0.5, 0.75]
    other = [{**r, "sparsity": None} for r in rows[:2]]
    compared = charts.compare_charts([{"id": 1, "name": "a", "metrics": rows},
                                      {"id": 2, "name": "b", "metrics": other}])  # fmt: skip
    assert [f["id"] for f in compared] == ["valid_accuracy", "train_loss", "sparsity"]
    assert [len(t["x"]) for t in compared[0]["data"]] == [3, 2]
    assert plots.curves("net", rows, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    both = plots.compare([("1 a", rows), ("2 b", other)], tmp_path / "d.png")
    assert both.stat().st_size > 10_000


def test_a_running_runs_loss_so_far_is_drawn_within_its_epoch() -> None:
    from jobs.training.config import progress_line
    from serve.ui import charts

    line = progress_line(3, 40, 80, 0.4242, 3.1)
    assert charts.within_epoch(line) == (2.5, 0.42)
    assert charts.within_epoch(None) is None and charts.within_epoch("garbage") is None
    rows = [{"epoch": e, "train_loss": 1.0 / e} for e in (1, 2)]
    (loss, *_) = charts.run_charts("net", rows, line)
    partial = loss["data"][-1]
    assert partial["x"] == [2, 2.5] and partial["y"] == [0.5, 0.42]
    assert len(charts.run_charts("net", rows)[0]["data"]) == 2  # not running: no partial line
