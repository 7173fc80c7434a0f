"""Output: data to stdout as a rich table or JSON, messages to stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


class Output(StrEnum):
    table = "table"
    json = "json"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)


def render(data: Any, columns: Sequence[str] | None, output: Output) -> None:
    """A list as a table of columns, one object as a two-column table; or JSON."""
    if output == Output.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    if isinstance(data, list):
        cols = list(columns or (data[0].keys() if data else []))
        table = Table(*[c.upper().replace("_", " ") for c in cols])
        for row in data:
            table.add_row(*[_cell(row.get(c)) for c in cols])
        out.print(table)
        return
    table = Table(show_header=False)
    for key in columns or data.keys():
        table.add_row(key, _cell(data.get(key)))
    out.print(table)


def message(text: str) -> None:
    err.print(text, highlight=False)
