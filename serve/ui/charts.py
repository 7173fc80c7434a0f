"""What the dashboard's charts show, as Plotly figures (data and layout, drawn by Plotly.js).

A run has two charts, loss (train and validation) and accuracy, one point per epoch, and
one more per custom metric it reported; compare overlays each metric of several runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUILT_IN = ("train_loss", "valid_loss", "valid_accuracy", "samples_per_s", "epoch_s")
NOT_CURVES = {"epoch", "attempt", "samples_per_s", "epoch_s"}

Figure = dict[str, Any]
_PROGRESS = re.compile(
    r"Epoch (?P<epoch>\d+) \[Train \|.*\| (?P<batch>\d+)/(?P<batches>\d+) batches, "
    r"(?P<cost>[0-9.]+) cost"
)


def _layout(title: str, y: str) -> dict[str, Any]:
    return {
        "title": {"text": title, "x": 0.02, "xanchor": "left"},
        "xaxis": {"title": {"text": "epoch"}, "dtick": 1},
        "yaxis": {"title": {"text": y}},
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "height": 320,
        "legend": {"orientation": "h"},
    }


def _trace(metrics: list[dict[str, Any]], key: str, name: str) -> dict[str, Any]:
    points = [(m["epoch"], m[key]) for m in metrics if m.get(key) is not None]
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "name": name,
        "x": [x for x, _ in points],
        "y": [y for _, y in points],
    }


def custom_keys(metrics: list[dict[str, Any]]) -> list[str]:
    """The names of the numbers a run reported itself, in the order first seen."""
    seen: dict[str, None] = {}
    for m in metrics:
        for key in m:
            if key not in NOT_CURVES and key not in BUILT_IN:
                seen.setdefault(key, None)
    return list(seen)


def within_epoch(progress: str | None) -> tuple[float, float] | None:
    """(epoch so far, train loss so far) from a running run's progress line (the trainer's
    jobs.training.config.progress_line: 'Epoch 3 [Train |...| 40/79 batches, 0.42 cost, ...')."""
    found = _PROGRESS.search(progress or "")
    if found is None or int(found["batches"]) == 0:
        return None
    epoch, batch, batches = int(found["epoch"]), int(found["batch"]), int(found["batches"])
    return epoch - 1 + batch / batches, float(found["cost"])


def run_charts(
    name: str, metrics: list[dict[str, Any]], progress: str | None = None
) -> list[Figure]:
    """A run's figures; while it trains, the loss so far in the epoch under way as well."""
    losses = [
        _trace(metrics, "train_loss", "train loss"),
        _trace(metrics, "valid_loss", "validation loss"),
    ]
    now = within_epoch(progress)
    if now is not None:
        last = [(m["epoch"], m["train_loss"]) for m in metrics if m.get("train_loss") is not None]
        points = [*last[-1:], now]
        losses.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "train loss, this epoch so far",
                "line": {"dash": "dot"},
                "x": [x for x, _ in points],
                "y": [y for _, y in points],
            }
        )
    figures = [
        {
            "id": "loss",
            "data": losses,
            "layout": _layout(f"{name}: loss", "loss"),
        },
        {
            "id": "accuracy",
            "data": [_trace(metrics, "valid_accuracy", "validation accuracy")],
            "layout": _layout(f"{name}: accuracy", "accuracy"),
        },
    ]
    for key in custom_keys(metrics):
        figures.append(
            {
                "id": f"custom-{key}",
                "data": [_trace(metrics, key, key)],
                "layout": _layout(key, key),
            }
        )
    return figures


def compare_charts(runs: Sequence[Mapping[str, Any]]) -> list[Figure]:
    """One chart per metric, one line per run."""
    keys = ["valid_accuracy", "valid_loss", "train_loss"]
    for run in runs:
        keys += [k for k in custom_keys(run["metrics"]) if k not in keys]
    figures = []
    for key in keys:
        data = [_trace(r["metrics"], key, f"{r['id']} {r['name']}") for r in runs]
        if any(d["x"] for d in data):
            figures.append({"id": key, "data": data, "layout": _layout(key, key)})
    return figures
