"""Training curves as PNG files for the terminal user (matplotlib, no display needed).

`curves` draws one run (loss and accuracy per epoch, then each custom metric); `compare`
overlays several runs, one panel per metric. Rows are a run's per-epoch metrics as the API
answers them (`ModelDetail.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

Rows = Sequence[dict[str, Any]]
NOT_CURVES = {"epoch", "attempt", "samples_per_s", "epoch_s"}
BUILT_IN = ("train_loss", "valid_loss", "valid_accuracy")


def _custom(rows: Rows) -> list[str]:
    keys = dict.fromkeys(k for r in rows for k in r if k not in NOT_CURVES and k not in BUILT_IN)
    return list(keys)


def _line(ax: Any, rows: Rows, key: str, label: str) -> bool:
    points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    if points:
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    return bool(points)


def _figure(panels: int) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    cols = min(panels, 2)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def _finish(fig: Any, axes: list[Any], path: Path) -> Path:
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curves(name: str, rows: Rows, path: Path) -> Path:
    """loss (train and validation), accuracy and each custom metric of one run, per epoch."""
    custom = _custom(rows)
    fig, axes = _figure(2 + len(custom))
    _line(axes[0], rows, "train_loss", "train loss")
    _line(axes[0], rows, "valid_loss", "validation loss")
    axes[0].set_title(f"{name}: loss")
    _line(axes[1], rows, "valid_accuracy", "validation accuracy")
    axes[1].set_title(f"{name}: accuracy")
    for ax, key in zip(axes[2:], custom, strict=True):
        _line(ax, rows, key, key)
        ax.set_title(key)
    return _finish(fig, axes, path)


def compare(runs: Sequence[tuple[str, Rows]], path: Path) -> Path:
    """One panel per metric that any run has, one line per run."""
    keys = [*BUILT_IN]
    for _, rows in runs:
        keys += [k for k in _custom(rows) if k not in keys]
    keys = [k for k in keys if any(r.get(k) is not None for _, rows in runs for r in rows)]
    fig, axes = _figure(max(len(keys), 1))
    for ax, key in zip(axes, keys, strict=False):
        for label, rows in runs:
            _line(ax, rows, key, label)
        ax.set_title(key)
    return _finish(fig, axes, path)
