"""What a `.py` spec may call while it trains (stdlib only, importable in the sandbox).

    from ncloud.training import report

    def forward(self, x):
        ...
        report(sparsity=float((h == 0).float().mean()))   # any time during an epoch

Each name's last value in an epoch is stored with that epoch's built-in metrics (rank 0's,
when a run has several workers), shown by `ncloud model show`, plotted on the dashboard and
compared. A name is 1-48 letters, digits or '_' (not a digit first, not a built-in metric);
a value is a finite number (a Python number, a 0-d tensor or a numpy scalar); a run may
report up to MAX_METRICS names. A bad name or value raises ValueError in the user's code.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

BUILT_IN = frozenset(
    {"epoch", "attempt", "train_loss", "valid_loss", "valid_accuracy", "samples_per_s", "epoch_s"}
)
MAX_METRICS = 16
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")

_lock = threading.Lock()
_pending: dict[str, float] = {}
_names: set[str] = set()  # every name this process has reported


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and name not in BUILT_IN


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"report({name}=...) needs a number, not a bool")
    try:
        found = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"report({name}=...) needs a number, not {type(value).__name__}") from None
    if not math.isfinite(found):
        raise ValueError(f"report({name}=...) needs a finite number, not {found}")
    return found


def report(**values: Any) -> None:
    """Record custom metrics for the epoch under way (the last value of each name wins)."""
    checked: dict[str, float] = {}
    for name, value in values.items():
        if not valid_name(name):
            raise ValueError(
                f"report() name {name!r}: 1-48 letters, digits or '_', not a digit first, "
                f"not one of {', '.join(sorted(BUILT_IN))}"
            )
        checked[name] = _number(name, value)
    with _lock:
        if len(_names | set(checked)) > MAX_METRICS:
            raise ValueError(f"a run may report at most {MAX_METRICS} metric names")
        _names.update(checked)
        _pending.update(checked)


def take() -> dict[str, float]:
    """What was reported since the last take (the trainer calls this at each epoch's end)."""
    with _lock:
        found = dict(_pending)
        _pending.clear()
    return found
