"""A batch prediction's result rows, and their CSV or JSONL form (no Ray, no torch here).

One row per input, in input order: ``id`` (the row number in the dataset, or the file path
of a manifest row), ``line`` (the row's manifest line), ``top_indexes``, ``top_labels`` and
``top_probabilities`` (most likely first), ``label`` (the true class name when the input
has one) and ``error`` (why a bad row was not predicted; empty otherwise). CSV joins the
top-k lists with ``;``; JSONL keeps them as lists and writes null for what is missing.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

COLUMNS = (
    "id",
    "line",
    "top_indexes",
    "top_labels",
    "top_probabilities",
    "label",
    "error",
)
LIST_COLUMNS = ("top_indexes", "top_labels", "top_probabilities")
ROWS_PER_CHUNK = 1000

Row = dict[str, Any]


def predicted_row(
    row_id: int | str, line: int | None, top: list[dict[str, Any]], label: str | None
) -> Row:
    """A predicted row from one input's top-k ({index, label, probability}, most likely first)."""
    return {
        "id": row_id,
        "line": line,
        "top_indexes": [int(t["index"]) for t in top],
        "top_labels": [str(t["label"]) if t["label"] is not None else str(t["index"]) for t in top],
        "top_probabilities": [float(t["probability"]) for t in top],
        "label": label,
        "error": None,
    }


def bad_row(row_id: int | str, line: int | None, error: str, label: str | None = None) -> Row:
    """A row that could not be predicted, and why."""
    return {
        "id": row_id,
        "line": line,
        "top_indexes": [],
        "top_labels": [],
        "top_probabilities": [],
        "label": label,
        "error": error,
    }


def _csv_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "top_probabilities":
        return ";".join(f"{p:.6g}" for p in value)
    if column in LIST_COLUMNS:
        return ";".join(str(v) for v in value)
    return str(value)


def csv_chunks(rows: Iterable[Row]) -> Iterator[bytes]:
    """The rows as CSV with a header, in chunks of bytes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for n, row in enumerate(rows, start=1):
        writer.writerow([_csv_cell(c, row.get(c)) for c in COLUMNS])
        if n % ROWS_PER_CHUNK == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


def jsonl_chunks(rows: Iterable[Row]) -> Iterator[bytes]:
    """The rows as JSON lines, in chunks of bytes."""
    lines: list[str] = []
    for row in rows:
        lines.append(json.dumps({c: row.get(c) for c in COLUMNS}))
        if len(lines) == ROWS_PER_CHUNK:
            yield ("\n".join(lines) + "\n").encode()
            lines = []
    if lines:
        yield ("\n".join(lines) + "\n").encode()


def encode(rows: Iterable[Row], fmt: str) -> Iterator[bytes]:
    return jsonl_chunks(rows) if fmt == "jsonl" else csv_chunks(rows)


def read_csv(text: str) -> list[Row]:
    """A CSV result back as rows (for tests and tools): lists split, numbers typed."""
    found = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: Row = dict(raw)
        row["top_indexes"] = [int(v) for v in raw["top_indexes"].split(";") if v]
        row["top_labels"] = [v for v in raw["top_labels"].split(";") if v]
        row["top_probabilities"] = [float(v) for v in raw["top_probabilities"].split(";") if v]
        row["line"] = int(raw["line"]) if raw["line"] else None
        row["label"] = raw["label"] or None
        row["error"] = raw["error"] or None
        found.append(row)
    return found
