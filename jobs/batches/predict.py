"""Batch prediction's work, without Ray: check the inputs, cut slices, predict one slice.

A slice of a dataset is a range of its rows in index order, read through the loader with
the model's eval transform (its rows in a fixed order: no shuffle). A slice of a new
manifest is a range of its rows, each decoded as a deployment decodes an upload
(jobs/models/predictor.py); a row that cannot be read or decoded becomes a bad row with the
reason, and the others are still predicted. jobs/batches/runner.py runs slices as Ray tasks.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from cluster.core import storage
from jobs.batches import results as batch_results
from jobs.batches.results import Row
from jobs.datasets.elements import KIND_BY_EXTENSION
from jobs.datasets.loader import ShardLoader
from jobs.datasets.shards import DatasetIndex, read_index, shard_url
from jobs.models.predictor import Predictor
from ncloud.errors import InvalidInput, NcloudError, ServerError
from ncloud.manifest import ColumnType, Manifest, ManifestRow, is_int, quoted, resolve_path

ROWS_PER_SLICE = 4096  # dataset rows per Ray task (whole shards; a slice may hold more)
MANIFEST_ROWS_PER_SLICE = 1000  # manifest rows per Ray task: each reads its own files
BATCH_SIZE = 256  # inputs per forward pass


@dataclass(frozen=True)
class Job:
    """What every slice of one batch needs (sent to each Ray task)."""

    model_url: str
    spec_name: str
    spec_text: str
    checkpoint: int | None  # None: the final weights
    k: int
    tenant_id: int  # whose sandbox runs the network
    dataset_url: str | None = None  # an ingested dataset ...
    link_url: str | None = None  # ... or a linked one (ingested into the node cache) ...
    manifest: Manifest | None = None  # ... or a manifest uploaded with its files (parsed once)
    max_file_bytes: int = 256 << 20
    tenant: str = ""
    volumes: tuple[tuple[int, str], ...] = ()  # (volume, path) the network reads, read-only


@dataclass(frozen=True)
class ManifestInput:
    """Where a batch manifest's input and (optional) true label are."""

    columns: int | tuple[int, ...]  # one FILE or STRING column, or ASCII_FLOAT columns
    label: int | None
    label_type: ColumnType | None


# -- checks before anything is written -------------------------------------------------------


def check_dataset(meta: dict[str, Any], info: dict[str, Any]) -> None:
    """The dataset holds what the model takes (kind, and shape unless the transform resizes)."""
    kind, want = meta.get("kind"), meta.get("dataset_shape")
    if info.get("kind") and info["kind"] != kind:
        raise InvalidInput(f"the dataset holds {info['kind']}, but the model takes {kind}")
    shape = info.get("shape")
    resizes = bool((meta.get("transform") or {}).get("resize"))
    if want and shape and list(shape) != list(want) and not (kind == "image" and resizes):
        raise InvalidInput(
            f"the dataset's examples have shape {list(shape)}, but the model was trained on "
            f"{list(want)}: predict over a manifest instead (inputs are resized there)"
        )


def manifest_input(m: Manifest, kind: str) -> ManifestInput:
    """The input column(s) and label column of a batch manifest for a model of this kind."""
    cols, floats = m.columns, ColumnType.ASCII_FLOAT
    # Like a dataset (jobs/elements.layout_of), but rows of another kind are bad rows here.
    label = len(cols) - 1 if len(cols) >= 2 and not all(t is floats for t in cols) else None
    label_type = cols[label] if label is not None else None
    inputs = cols[:label] if label is not None else cols
    if all(t is floats for t in inputs):
        if kind != "features":
            raise InvalidInput(f"the manifest holds feature vectors, but the model takes {kind}")
        return ManifestInput(tuple(range(len(inputs))), label, label_type)
    if len(inputs) == 1 and inputs[0] in (ColumnType.FILE, ColumnType.STRING):
        if inputs[0] is ColumnType.STRING and kind != "text":
            raise InvalidInput(f"the manifest holds inline text, but the model takes {kind}")
        return ManifestInput(0, label, label_type)
    names = ", ".join(f"@{t.value}" for t in cols)
    raise InvalidInput(
        f"manifest columns {names} make no sense: give one @FILE, one @STRING or some "
        "@ASCII_FLOAT input columns, then optionally a label column last"
    )


# -- slices ---------------------------------------------------------------------------------


def dataset_slices(shard_rows: list[int], per_slice: int = ROWS_PER_SLICE) -> list[tuple[int, int]]:
    """(first, end) rows of each slice: whole shards, about per_slice rows each."""
    slices, first, pos = [], 0, 0
    for n in shard_rows:
        pos += n
        if pos - first >= per_slice:
            slices.append((first, pos))
            first = pos
    if pos > first:
        slices.append((first, pos))
    return slices


def row_slices(rows: int, per_slice: int = MANIFEST_ROWS_PER_SLICE) -> list[tuple[int, int]]:
    return [(a, min(a + per_slice, rows)) for a in range(0, rows, per_slice)]


# -- predicting one slice -------------------------------------------------------------------


@torch.no_grad()
def forward(p: Predictor, x: torch.Tensor) -> torch.Tensor:
    """Probabilities [N, classes] for a batch the loader already transformed."""
    out = p.network(x)
    if out.ndim != 2 or out.shape[1] != p.num_classes:
        raise ServerError(f"the network answered shape {list(out.shape)}, not [N, classes]")
    return out.float() if p.ends_in_softmax else torch.softmax(out.float(), dim=1)


def manifest_lines(ds_url: str, index: DatasetIndex, first: int, end: int) -> list[int]:
    """The manifest line of each row in [first, end), from the shards' row column."""
    lines: list[int] = []
    pos = 0
    for info in index.shards:
        a, b = max(first, pos), min(end, pos + info.rows)
        if a < b:
            fs, path = storage.filesystem(shard_url(ds_url, info.name))
            with fs.open(path, "rb") as handle:
                column = pq.read_table(handle, columns=["row"]).column("row")
            lines.extend(int(v) for v in column.slice(a - pos, b - a).to_pylist())
        pos += info.rows
    return lines


def predict_dataset(p: Predictor, ds_url: str, first: int, end: int | None, k: int) -> list[Row]:
    """Rows [first, end) of an ingested dataset (end None: all of them), in index order."""
    index = read_index(ds_url)
    end = index.rows if end is None else end
    if not 0 <= first <= end <= index.rows:
        raise ServerError(f"rows {first}..{end} are outside the dataset's {index.rows} rows")
    if first == end:
        return []
    loader = ShardLoader(
        ds_url,
        batch_size=BATCH_SIZE,
        transform=p.meta.get("transform"),
        train=False,
        prefetch=1,
        rows=(first / index.rows, end / index.rows),
    )
    if loader.rows != end - first:
        raise ServerError(f"the loader cut {loader.rows} rows, not {end - first}")
    lines = manifest_lines(ds_url, index, first, end)
    classes = index.classes
    rows: list[Row] = []
    for x, y in loader:
        for top, label in zip(p.top_k(forward(p, x), k), y.tolist(), strict=True):
            n = first + len(rows)
            name = None if label < 0 else (classes[label] if classes else str(label))
            rows.append(batch_results.predicted_row(n, lines[n - first], top, name))
    return rows


def _true_label(p: Predictor, row: ManifestRow, where: ManifestInput) -> str | None:
    if where.label is None:
        return None
    cell = row.cells[where.label].strip()
    if where.label_type is ColumnType.STRING:
        return cell or None
    if where.label_type is ColumnType.ASCII_INT and is_int(cell):
        value = int(cell)
        return p.classes[value] if p.classes and 0 <= value < len(p.classes) else str(value)
    return None  # label files are not read for a batch


def _read(m: Manifest, row: ManifestRow, cell: str, limit: int) -> bytes:
    url = resolve_path(m.root, cell, row.line)
    where = f"file {quoted(cell)}"
    try:
        if storage.size_of(url) > limit:
            raise InvalidInput(f"{where} is over the {limit} byte limit")
        return storage.read_bytes(url)
    except FileNotFoundError:
        raise InvalidInput(f"{where} was not uploaded") from None
    except IsADirectoryError:
        raise InvalidInput(f"{where} is a folder, not a file") from None


def decode_row(
    p: Predictor, m: Manifest, row: ManifestRow, where: ManifestInput, limit: int
) -> Any:
    """One manifest row's input as the model takes it; InvalidInput says what is wrong."""
    if isinstance(where.columns, tuple):
        values = np.asarray([float(row.cells[i]) for i in where.columns], np.float32)
        if values.shape[0] != p.input_shape[-1]:
            raise InvalidInput(f"{values.shape[0]} features; the model takes {p.input_shape[-1]}")
        return values
    cell = row.cells[where.columns]
    if m.columns[where.columns] is ColumnType.STRING:
        return p.decode("text.txt", cell.encode("utf-8"))
    ext = posixpath.splitext(cell.strip().lower())[1]
    kind = KIND_BY_EXTENSION.get(ext)
    if (kind is None or kind.value != p.kind) and not (p.kind == "features" and ext == ".json"):
        article = "an" if p.kind[0] in "aeiou" else "a"
        raise InvalidInput(
            f"file {quoted(cell)} is not {article} {p.kind} file, which the model takes"
        )
    return p.decode(cell, _read(m, row, cell, limit))


def _row_id(m: Manifest, where: ManifestInput, n: int) -> int | str:
    """A file row is known by its path; an inline row by its row number."""
    if where.columns == 0 and m.columns[0] is ColumnType.FILE:
        return m.rows[n].cells[0]
    return n


def predict_manifest(
    p: Predictor, m: Manifest, first: int, end: int, k: int, limit: int
) -> list[Row]:
    """Rows [first, end) of a batch manifest: good rows predicted, bad ones with their error."""
    where = manifest_input(m, p.kind)
    out: list[Row] = []
    good: list[tuple[int, Any]] = []  # (position in out, decoded input)
    for n in range(first, end):
        row = m.rows[n]
        try:
            good.append((len(out), decode_row(p, m, row, where, limit)))
            error = "not predicted"  # replaced below
        except NcloudError as exc:
            error = f"manifest line {row.line}: {exc.message}"
        out.append(
            batch_results.bad_row(_row_id(m, where, n), row.line, error, _true_label(p, row, where))
        )
    for a in range(0, len(good), BATCH_SIZE):
        chunk = good[a : a + BATCH_SIZE]
        for (pos, _), top in zip(chunk, _top_k(p, [x for _, x in chunk], k), strict=True):
            bad = out[pos]
            if isinstance(top, str):
                bad["error"] = f"manifest line {bad['line']}: {top}"
            else:
                out[pos] = batch_results.predicted_row(bad["id"], bad["line"], top, bad["label"])
    return out


def _top_k(p: Predictor, inputs: list[Any], k: int) -> list[list[dict[str, Any]] | str]:
    """Top-k of each input; if the batch fails, each input alone (a failure: its message)."""
    try:
        return list(p.top_k(p.probabilities(inputs), k))
    except (NcloudError, RuntimeError, ValueError):
        pass
    found: list[list[dict[str, Any]] | str] = []
    for x in inputs:
        try:
            found.append(p.top_k(p.probabilities([x]), k)[0])
        except (NcloudError, RuntimeError, ValueError) as exc:
            found.append(f"the network cannot take this input ({type(exc).__name__}: {exc})")
    return found


def predict_slice(job: Job, first: int, end: int | None) -> list[Row]:
    """One slice of a batch, from loading the model to its result rows (a Ray task runs it)."""
    torch.set_num_threads(1)
    p = Predictor(
        job.model_url,
        job.spec_name,
        job.spec_text,
        job.checkpoint,
        tenant_id=job.tenant_id,
        mounts=job.volumes,
        pull=_puller(job) if job.volumes else None,
    )
    try:
        return _predict_slice(p, job, first, end)
    finally:
        p.close()


def _puller(job: Job) -> Callable[[int, Path], object]:
    """Fetches a volume's files for the task's sandbox (the task opens the store for it)."""
    from cluster.core.store import open_store
    from jobs.volumes import sync as volume_sync
    from ncloud.settings import settings

    store = open_store(settings().db_url)
    return lambda volume, into: volume_sync.pull(store, job.tenant, volume, into)


def _predict_slice(p: Predictor, job: Job, first: int, end: int | None) -> list[Row]:
    if job.manifest is not None:
        m = job.manifest
        return predict_manifest(
            p, m, first, len(m.rows) if end is None else end, job.k, job.max_file_bytes
        )
    if job.link_url is not None:
        from jobs.datasets.linked import ensure_cached

        return predict_dataset(p, ensure_cached(job.link_url), first, end, job.k)
    if job.dataset_url is None:
        raise ServerError("a batch job names no dataset and no manifest")
    return predict_dataset(p, job.dataset_url, first, end, job.k)
