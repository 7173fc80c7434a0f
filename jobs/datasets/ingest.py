"""Ingest: decode and validate every example once, write shards and an index (no Ray here).

`plan` splits a manifest into parts; `ingest_part` decodes one part's rows and writes its
shards (a Ray task runs it, see jobs/datasets/ingest_runner.py); `finish` checks the parts agree
and writes the index last. A dataset with any bad row gets no index: the first bad rows
are reported instead.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from cluster.core import storage
from jobs.datasets import elements, shards
from jobs.datasets.elements import ElementKind, Layout
from ncloud.errors import InvalidInput, NcloudError, StorageFull
from ncloud.manifest import Manifest, ManifestRow

ROWS_PER_PART = 2000
MAX_REPORTED_ERRORS = 5


@dataclass(frozen=True)
class Plan:
    manifest: Manifest
    layout: Layout
    classes: list[str] | None
    parts: list[list[ManifestRow]]


@dataclass
class PartResult:
    part_no: int
    shards: list[shards.ShardInfo] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    feature_lengths: set[int] = field(default_factory=set)


def plan(manifest: Manifest, max_parts: int = 64, seed: int = 0) -> Plan:
    """Layout, class names and the rows of each part, shuffled once so shards mix classes."""
    layout = elements.layout_of(manifest)
    classes = elements.class_names(manifest, layout, storage.read_bytes, size_of=storage.size_of)
    rows = list(manifest.rows)
    random.Random(seed).shuffle(rows)
    n_parts = max(1, min(max_parts, math.ceil(len(rows) / ROWS_PER_PART)))
    size = math.ceil(len(rows) / n_parts)
    parts = [rows[i * size : (i + 1) * size] for i in range(n_parts)]
    return Plan(manifest, layout, classes, [p for p in parts if p])


def ingest_part(p: Plan, part_no: int, ds_url: str, max_file_bytes: int) -> PartResult:
    """Decode this part's rows and write its shards; bad rows are collected, not written."""
    result = PartResult(part_no)

    def records():  # type: ignore[no-untyped-def]
        for row in p.parts[part_no]:
            try:
                ex = elements.decode_example(
                    p.manifest,
                    p.layout,
                    row,
                    storage.read_bytes,
                    p.classes,
                    max_file_bytes,
                    storage.size_of,
                )
            except InvalidInput as exc:
                if len(result.errors) < MAX_REPORTED_ERRORS:
                    result.errors.append((row.line, str(exc)))
                continue
            if ex.kind is ElementKind.FEATURES and not isinstance(ex.x, str):
                result.feature_lengths.add(int(ex.x.shape[0]))
            data, shape = elements.encode_example(ex)
            yield data, shape, ex.label, row.line

    result.shards = shards.write_part(
        ds_url, part_no, records(), kind=p.layout.kind.value, classes=p.classes
    )
    return result


def finish(p: Plan, ds_url: str, results: list[PartResult]) -> shards.DatasetIndex:
    """Write the index if every row was good; otherwise remove the shards and say which rows."""
    errors = sorted(e for r in results for e in r.errors)
    lengths = set().union(*(r.feature_lengths for r in results))
    if not errors and len(lengths) > 1:
        errors = [(0, f"feature vectors have different lengths: {sorted(lengths)[:5]}")]
    if errors:
        storage.remove_tree(storage.join(ds_url, "shards"))
        listed = "; ".join(message for _, message in errors[:MAX_REPORTED_ERRORS])
        raise InvalidInput(f"{len(errors)}+ bad rows, nothing ingested: {listed}")
    infos = [s for r in sorted(results, key=lambda r: r.part_no) for s in r.shards]
    return shards.write_index(ds_url, p.layout.kind.value, p.classes, infos)


def ingest_local(manifest: Manifest, ds_url: str, max_file_bytes: int) -> shards.DatasetIndex:
    """The whole ingest in this process (linked datasets filling a node cache, small tests)."""
    p = plan(manifest)
    results = [ingest_part(p, i, ds_url, max_file_bytes) for i in range(len(p.parts))]
    return finish(p, ds_url, results)


def describe_failure(exc: BaseException) -> str:
    """One line for a dataset's Error status."""
    if isinstance(exc, NcloudError) and not isinstance(exc, StorageFull):
        return exc.message
    told = exc if isinstance(exc, StorageFull) else storage.storage_error(exc)
    if told is not None:  # a full disk, S3 without credentials or out of reach
        return f"{told.message}; then retry with `ncloud dataset ingest ID`"
    if isinstance(exc, OSError | TimeoutError | ConnectionError) or _is_connection_error(exc):
        return (
            f"storage unreachable or failing ({type(exc).__name__}: {exc}); "
            "retry with `ncloud dataset ingest ID`"
        )
    return f"{type(exc).__name__}: {exc}"


def _is_connection_error(exc: BaseException) -> bool:
    """botocore's connection failures are not OSErrors; recognise them by their base class."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:
        return False
    return isinstance(exc, BotoConnectionError | HTTPClientError)
