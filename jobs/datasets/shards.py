"""Dataset shards: Parquet files of examples plus an index.json written last."""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from ncloud.errors import InvalidInput, NotFound

FORMAT = 1
KIND_DTYPES = {"image": "uint8", "text": "utf8", "audio": "int16", "features": "float32"}
ITEM_BYTES = {"uint8": 1, "utf8": 1, "int16": 2, "float32": 4}
SCHEMA = pa.schema(
    [("x", pa.binary()), ("shape", pa.list_(pa.int32())), ("y", pa.int64()), ("row", pa.int64())]
)
# A row group is what the loader reads at once: about 8 MiB, at most 1024 rows.
ROW_GROUP_BYTES = 8 << 20
ROW_GROUP_ROWS = 1024
MAX_SHARD_BYTES = 256 << 20
SHARD_KEYS = ("name", "rows", "bytes", "sha256")

Record = tuple[bytes, Sequence[int], int, int]


@dataclass(frozen=True)
class ShardInfo:
    """One shard file; class_counts and shape are kept for merging, not written per shard."""

    name: str
    rows: int
    bytes: int
    sha256: str
    class_counts: dict[int, int] = field(default_factory=dict, compare=False)
    shape: tuple[int, ...] | None = field(default=None, compare=False)  # None: rows differ


@dataclass(frozen=True)
class DatasetIndex:
    """The parsed index.json of an ingested dataset."""

    kind: str
    dtype: str
    rows: int
    classes: list[str] | None
    class_counts: dict[int, int]
    shape: tuple[int, ...] | None
    bytes: int
    shards: list[ShardInfo]
    checksum: str
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        data = {"format": self.format} | {f.name: getattr(self, f.name) for f in fields(self)}
        data["class_counts"] = {str(k): v for k, v in sorted(self.class_counts.items())}
        data["shape"] = list(self.shape) if self.shape is not None else None
        data["shards"] = [{k: getattr(s, k) for k in SHARD_KEYS} for s in self.shards]
        return data

    @classmethod
    def from_json(cls, data: Any) -> DatasetIndex:
        try:
            if data["format"] != FORMAT:
                raise InvalidInput(f"index.json format {data['format']!r} is not {FORMAT}")
            shape = data["shape"]
            return cls(
                kind=str(data["kind"]),
                dtype=str(data["dtype"]),
                rows=int(data["rows"]),
                classes=list(data["classes"]) if data["classes"] is not None else None,
                class_counts={int(k): int(v) for k, v in data["class_counts"].items()},
                shape=tuple(int(d) for d in shape) if shape is not None else None,
                bytes=int(data["bytes"]),
                shards=[
                    ShardInfo(str(s["name"]), int(s["rows"]), int(s["bytes"]), str(s["sha256"]))
                    for s in data["shards"]
                ],
                checksum=str(data["checksum"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"index.json is malformed: {exc!r}") from exc


def shard_url(ds_url: str, name: str) -> str:
    """The URL of one shard file of the dataset at ds_url."""
    return f"{ds_url.rstrip('/')}/shards/{name}"


def dataset_checksum(shards: Sequence[ShardInfo]) -> str:
    """sha256 over the shards' sha256 hex digests, in index order."""
    return hashlib.sha256("".join(s.sha256 for s in shards).encode()).hexdigest()


def _check_record(kind: str, x: bytes, shape: Sequence[int], y: int, n_classes: int | None) -> None:
    if y < -1 or (n_classes is not None and y >= n_classes):
        raise InvalidInput(f"label {y} is outside -1..{(n_classes or 0) - 1}")
    if kind == "text":
        return
    dims = {"image": 3, "audio": 2, "features": 1}[kind]
    if len(shape) != dims or any(d <= 0 for d in shape):
        raise InvalidInput(f"{kind} shape {list(shape)} must have {dims} positive dimensions")
    if kind == "image" and shape[2] not in (1, 3):
        raise InvalidInput(f"image shape {list(shape)} must end in 1 or 3 channels")
    want = math.prod(shape) * ITEM_BYTES[KIND_DTYPES[kind]]
    if len(x) != want:
        raise InvalidInput(f"{kind} of shape {list(shape)} needs {want} bytes, got {len(x)}")


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.sha, self.size, self.closed = raw, hashlib.sha256(), 0, False

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.raw.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.closed = True


def write_index(
    ds_url: str, kind: str, classes: Sequence[str] | None, shard_infos: Sequence[ShardInfo]
) -> DatasetIndex:
    """Merge the shards' counts into index.json and write it last (atomically)."""
    if kind not in KIND_DTYPES:
        raise InvalidInput(f"kind {kind!r} is not one of {sorted(KIND_DTYPES)}")
    names = [s.name for s in shard_infos]
    if len(set(names)) != len(names):
        raise InvalidInput("two shards have the same name; give each ingest part its own part_no")
    counts: Counter[int] = Counter()
    shapes: set[tuple[int, ...] | None] = set()
    for s in shard_infos:
        counts.update(s.class_counts)
        if s.rows:
            shapes.add(s.shape)
    index = DatasetIndex(
        kind=kind,
        dtype=KIND_DTYPES[kind],
        rows=sum(s.rows for s in shard_infos),
        classes=list(classes) if classes is not None else None,
        class_counts=dict(counts),
        shape=shapes.pop() if len(shapes) == 1 else None,
        bytes=sum(s.bytes for s in shard_infos),
        shards=list(shard_infos),
        checksum=dataset_checksum(shard_infos),
    )
    fs, root = fsspec.core.url_to_fs(ds_url)
    path = f"{root.rstrip('/')}/index.json"
    data = json.dumps(index.to_json(), indent=1).encode()
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:  # one PUT: object stores make it visible whole or not at all
        fs.pipe_file(path, data)
    return index


def read_index(ds_url: str) -> DatasetIndex:
    """The dataset's index; NotFound when it was never (completely) ingested."""
    fs, root = fsspec.core.url_to_fs(ds_url)
    try:
        raw = fs.cat_file(f"{root.rstrip('/')}/index.json")
    except FileNotFoundError as exc:
        raise NotFound(f"dataset {ds_url!r} has no index.json: it is not ingested") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"{ds_url}/index.json is not JSON: {exc}") from exc
    return DatasetIndex.from_json(data)


class ShardWriter:
    """Streams examples into shard files as it goes; close() writes index.json last.

    kind=None (for write_part) skips the per-record checks; close() then needs a kind.
    """

    def __init__(
        self,
        ds_url: str,
        kind: str | None,
        classes: Sequence[str] | None,
        rows_per_shard: int = 4096,
        *,
        max_shard_bytes: int = MAX_SHARD_BYTES,
        name_format: str = "part-{:05d}.parquet",
    ) -> None:
        if kind is not None and kind not in KIND_DTYPES:
            raise InvalidInput(f"kind {kind!r} is not one of {sorted(KIND_DTYPES)}")
        if rows_per_shard < 1 or max_shard_bytes < 1:
            raise InvalidInput("rows_per_shard and max_shard_bytes must be positive")
        self.ds_url, self.kind, self.name_format = ds_url, kind, name_format
        self.classes = list(classes) if classes is not None else None
        self.fs, root = fsspec.core.url_to_fs(ds_url)
        self.dir = f"{root.rstrip('/')}/shards"
        self.fs.makedirs(self.dir, exist_ok=True)
        self.rows_per_shard, self.max_shard_bytes = rows_per_shard, max_shard_bytes
        self.infos: list[ShardInfo] = []
        self.index: DatasetIndex | None = None
        self._cols: tuple[list[bytes], list[list[int]], list[int], list[int]] = ([], [], [], [])
        self._group_bytes = self._rows = self._data_bytes = 0
        self._raw: IO[bytes] | None = None
        self._file: _HashingFile | None = None
        self._writer: pq.ParquetWriter | None = None
        self._counts: Counter[int] = Counter()
        self._shapes: set[tuple[int, ...]] = set()

    def add(self, x: bytes, shape: Sequence[int], y: int, row: int) -> None:
        """Append one example: its raw bytes, shape, label (-1: none) and manifest line."""
        if self.index is not None:
            raise InvalidInput("this ShardWriter is closed")
        if self.kind is not None:
            n_classes = len(self.classes) if self.classes is not None else None
            _check_record(self.kind, x, shape, y, n_classes)
        xs, shapes, ys, rows = self._cols
        xs.append(bytes(x))
        shapes.append([int(d) for d in shape])
        ys.append(int(y))
        rows.append(int(row))
        self._group_bytes += len(x)
        room = min(ROW_GROUP_ROWS, self.rows_per_shard - self._rows)
        if len(xs) >= room or self._group_bytes >= ROW_GROUP_BYTES:
            self._flush_group()
        if self._rows >= self.rows_per_shard or self._data_bytes >= self.max_shard_bytes:
            self._close_shard()

    def _flush_group(self) -> None:
        xs, shapes, ys, rows = self._cols
        n = min(len(xs), self.rows_per_shard - self._rows)
        if n == 0:
            return
        if self._writer is None:
            name = self.name_format.format(len(self.infos))
            self._raw = self.fs.open(f"{self.dir}/{name}", "wb")
            self._file = _HashingFile(self._raw)
            self._writer = pq.ParquetWriter(
                pa.PythonFile(self._file, mode="w"),
                SCHEMA,
                compression="zstd" if self.kind == "text" else "none",  # pixels barely shrink
                use_dictionary=["y"],
                write_statistics=["y", "row"],
            )
        columns = [xs[:n], shapes[:n], ys[:n], rows[:n]]
        self._writer.write_table(pa.table(columns, schema=SCHEMA), row_group_size=n)
        self._rows += n
        self._data_bytes += sum(len(v) for v in xs[:n])
        self._counts.update(ys[:n])
        self._shapes.update(tuple(s) for s in shapes[:n])
        for col in self._cols:
            del col[:n]
        self._group_bytes = sum(len(v) for v in xs)

    def _close_shard(self) -> None:
        self._flush_group()
        if self._writer is None or self._file is None or self._raw is None:
            return
        self._writer.close()
        self._raw.close()
        info = ShardInfo(
            name=self.name_format.format(len(self.infos)),
            rows=self._rows,
            bytes=self._file.size,
            sha256=self._file.sha.hexdigest(),
            class_counts=dict(self._counts),
            shape=next(iter(self._shapes)) if len(self._shapes) == 1 else None,
        )
        self.infos.append(info)
        self._writer = self._file = self._raw = None
        self._rows = self._data_bytes = 0
        self._counts, self._shapes = Counter(), set()

    def finish(self) -> list[ShardInfo]:
        """Write what is buffered and close the last shard; no index.json (see close)."""
        while self._cols[0]:
            self._close_shard()
        self._close_shard()
        return self.infos

    def close(self) -> DatasetIndex:
        """finish(), then write index.json: from now on the dataset is visible."""
        if self.index is None:
            if self.kind is None:
                raise InvalidInput("a ShardWriter without a kind cannot write index.json")
            self.index = write_index(self.ds_url, self.kind, self.classes, self.finish())
        return self.index

    def abort(self) -> None:
        """Stop without an index.json: the half-written dataset stays invisible."""
        if self._raw is not None:
            self._raw.close()
        self._writer = self._file = self._raw = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_part(
    ds_url: str,
    part_no: int,
    records: Iterable[Record],
    *,
    kind: str | None = None,
    classes: Sequence[str] | None = None,
    rows_per_shard: int = 4096,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> list[ShardInfo]:
    """Write one ingest task's records (x, shape, y, row) as part-PPPPP-SSSSS.parquet files."""
    if part_no < 0:
        raise InvalidInput(f"part_no {part_no} must be >= 0")
    writer = ShardWriter(
        ds_url,
        kind,
        classes,
        rows_per_shard,
        max_shard_bytes=max_shard_bytes,
        name_format=f"part-{part_no:05d}-{{:05d}}.parquet",
    )
    try:
        for x, shape, y, row in records:
            writer.add(x, shape, y, row)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()
