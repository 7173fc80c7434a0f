"""Streams one rank's share of a dataset's shards as shuffled, transformed batches."""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from fsspec.implementations.local import LocalFileSystem

from jobs.datasets.cache import ensure_local, evict
from jobs.datasets.pump import drain, pump
from jobs.datasets.shards import ITEM_BYTES, read_index, shard_url
from jobs.datasets.transforms import ImageTransform, build_transform
from ncloud.errors import Conflict, InvalidInput, NotFound

Piece = tuple[int, int, int]  # (shard number in the index, first row, end row)
NP_DTYPES = {"uint8": np.uint8, "utf8": np.uint8, "int16": np.int16, "float32": np.float32}
THREAD_PREFIX = "ncloud-loader-"  # the names of an iteration's two threads


def rank_pieces(
    shard_rows: Sequence[int], rank: int, world_size: int, seed: int | None, epoch: int
) -> list[Piece]:
    """This rank's rows: the shards in a (seed, epoch) order, cut into world_size equal runs.

    Every run has ceil(rows / world_size) rows, so all ranks take the same number of steps;
    the last run wraps around to the start, repeating at most world_size - 1 rows.
    """
    total = sum(shard_rows)
    per = math.ceil(total / world_size) if total else 0
    order = list(range(len(shard_rows)))
    if seed is not None:
        order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(len(order))]
    spans, pos, end = [], rank * per, (rank + 1) * per  # in the order, repeated endlessly
    while pos < end:
        start = pos % total
        stop = min(start + end - pos, total)
        spans.append((start, stop))
        pos += stop - start
    pieces: list[Piece] = []
    for a, b in spans:
        pos = 0
        for s in order:
            start, stop = max(a, pos), min(b, pos + shard_rows[s])
            if start < stop:
                pieces.append((s, start - pos, stop - pos))
            pos += shard_rows[s]
    return pieces


def row_segments(
    shard_rows: Sequence[int], rows: tuple[float, float] | None
) -> list[tuple[int, int]]:
    """Per shard, the (first, end) rows inside the fraction range `rows` of all rows in order.

    The same boundary fraction always cuts at the same row, so (0, 0.8) and (0.8, 1) split
    a dataset into two disjoint parts that cover it.
    """
    if rows is None:
        return [(0, n) for n in shard_rows]
    lo, hi = rows
    if not 0.0 <= lo < hi <= 1.0:
        raise InvalidInput(f"rows {rows!r} must be fractions with 0 <= first < end <= 1")
    total = sum(shard_rows)
    first, end = round(lo * total), round(hi * total)
    segments, pos = [], 0
    for n in shard_rows:
        a, b = min(max(first - pos, 0), n), min(max(end - pos, 0), n)
        segments.append((a, max(a, b)))
        pos += n
    return segments


def _fixed_rows(column: pa.ChunkedArray, row_bytes: int) -> np.ndarray:
    """The binary column as one uint8 [n, row_bytes] array over Arrow's buffer (no row loop)."""
    parts = []
    for chunk in column.chunks:
        n = len(chunk)
        if n == 0:
            continue
        offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        offsets = np.frombuffer(chunk.buffers()[1], offset_type, count=chunk.offset + n + 1)
        start, end = int(offsets[chunk.offset]), int(offsets[chunk.offset + n])
        if end - start != n * row_bytes:
            raise Conflict("a shard holds rows of another size than its index.json's shape")
        data = np.frombuffer(chunk.buffers()[2], np.uint8, count=end - start, offset=start)
        parts.append(data.reshape(n, row_bytes))
    if not parts:
        return np.empty((0, row_bytes), np.uint8)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _labels(column: pa.ChunkedArray) -> np.ndarray:
    """The int64 label column as numpy (pyarrow's to_numpy would import pandas)."""
    parts = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise Conflict("a shard has rows without a label (y); ingest the dataset again")
        parts.append(np.frombuffer(chunk.buffers()[1], np.int64, len(chunk), chunk.offset * 8))
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


class ShardLoader:
    """Batches (x, y) of one rank's disjoint, equal share of an ingested dataset.

    x: images float32 [N, C, h, w]; features float32 [N, d]; text int64 [N, L];
    audio float32 [N, C, L] (see jobs.datasets.transforms). y: int64 [N] (-1 = no label).
    rows=(a, b) keeps only that fraction range of the rows in index order (a hold-out split),
    before the rows are split among ranks and shuffled.
    A background thread reads Parquet row groups in a shuffled order into a window of at most
    buffer_bytes, shuffles the window and cuts batches; a second thread transforms them;
    at most `prefetch` finished batches wait. Memory stays bounded whatever the dataset size.
    """

    def __init__(
        self,
        ds_url: str,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 256,
        shuffle_seed: int | None = None,
        epoch: int = 0,
        transform: Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        drop_last: bool = False,
        prefetch: int = 2,
        *,
        train: bool = False,
        buffer_bytes: int = 256 << 20,
        cache_max_bytes: int | None = None,
        mix_shards: int = 8,
        rows: tuple[float, float] | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise InvalidInput(f"rank {rank} is not in 0..{world_size - 1}")
        if batch_size < 1 or prefetch < 1 or buffer_bytes < 1 or mix_shards < 1:
            raise InvalidInput("batch_size, prefetch, buffer_bytes and mix_shards must be >= 1")
        self.ds_url, self.rank, self.world_size = ds_url, rank, world_size
        self.batch_size, self.shuffle_seed, self.epoch = batch_size, shuffle_seed, epoch
        self.cache_dir, self.drop_last, self.prefetch = cache_dir, drop_last, prefetch
        self.train, self.buffer_bytes = train, buffer_bytes
        self.cache_max_bytes, self.mix_shards = cache_max_bytes, mix_shards
        self.index = read_index(ds_url)
        wanted = (transform or {}).get("kind", self.index.kind)
        if wanted != self.index.kind:
            raise InvalidInput(f"a {wanted} transform cannot read a {self.index.kind} dataset")
        self.transform = build_transform(transform, train, kind=self.index.kind)
        shape = self.index.shape
        t = self.transform
        if isinstance(t, ImageTransform) and shape is None and self.index.rows and not t.resize:
            raise InvalidInput("this dataset's images differ in size: add a 'resize'")
        self.dtype = NP_DTYPES[self.index.dtype]
        self.row_bytes = math.prod(shape) * ITEM_BYTES[self.index.dtype] if shape else 0
        self.segments = row_segments([s.rows for s in self.index.shards], rows)
        self.rows = sum(b - a for a, b in self.segments)  # this loader's rows, all ranks
        self.rows_per_rank = math.ceil(self.rows / world_size)
        self.peak_buffer_bytes = 0  # the most example bytes held in the shuffle window

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for this epoch next time (like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.rows_per_rank // self.batch_size
        return math.ceil(self.rows_per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        stop = threading.Event()
        raw: queue.Queue[Any] = queue.Queue(maxsize=2)
        done: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        epoch = self.epoch
        threads = [
            threading.Thread(
                target=pump,
                args=(self._raw_batches(epoch), raw, stop),
                name=f"{THREAD_PREFIX}read",
                daemon=True,
            ),
            threading.Thread(
                target=pump,
                args=(self._transformed(drain(raw, stop), epoch), done, stop),
                name=f"{THREAD_PREFIX}transform",
                daemon=True,
            ),
        ]
        for t in threads:
            t.start()
        try:
            yield from drain(done, stop)
        finally:
            stop.set()
            for t in threads:
                t.join()

    def _transformed(
        self, raws: Iterator[tuple[int, Any, np.ndarray]], epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = self.shuffle_seed
        for batch_no, xs, ys in raws:
            rng = np.random.default_rng(
                None if seed is None else [seed, epoch, self.rank, batch_no, 1]
            )
            x = self.transform.fixed(xs, rng) if self.row_bytes else self.transform.items(xs, rng)
            yield x, torch.from_numpy(ys)

    def _fetch(self, s: int) -> str:
        """The local path of shard s: the cached copy, or the shard itself without a cache."""
        info = self.index.shards[s]
        url = shard_url(self.ds_url, info.name)
        if self.cache_dir is None:
            return url
        try:
            return str(ensure_local(url, info.sha256, self.cache_dir))
        except FileNotFoundError as exc:
            raise self._missing(s) from exc

    def _missing(self, s: int) -> NotFound:
        name = self.index.shards[s].name
        return NotFound(f"shard {name} of dataset {self.ds_url} is missing; ingest it again")

    def _open(self, s: int, where: str, stack: contextlib.ExitStack) -> pq.ParquetFile:
        info = self.index.shards[s]
        if self.cache_dir is None:
            fs, path = fsspec.core.url_to_fs(where)
            local = isinstance(fs, LocalFileSystem)
            try:
                src = path if local else stack.enter_context(fs.open(path, "rb"))
                pf = pq.ParquetFile(src, memory_map=local)
            except FileNotFoundError as exc:
                raise self._missing(s) from exc
        else:
            try:
                pf = pq.ParquetFile(where, memory_map=True)
            except FileNotFoundError:  # a parallel evict deleted it before we opened it
                pf = pq.ParquetFile(self._fetch(s), memory_map=True)
        stack.callback(pf.close)
        if pf.metadata.num_rows != info.rows:
            raise Conflict(
                f"shard {info.name} has {pf.metadata.num_rows} rows, not the {info.rows} "
                "of index.json; ingest the dataset again"
            )
        return pf

    def _raw_batches(self, epoch: int) -> Iterator[tuple[int, Any, np.ndarray]]:
        """(batch number, examples, labels) of this rank, in order; runs in the reader thread.

        Pieces go in groups of mix_shards shards: a group's row groups are read in a random
        order, and the next group's shards download meanwhile.
        """
        seed = self.shuffle_seed
        rng = None if seed is None else np.random.default_rng([seed, epoch, self.rank])
        lengths = [b - a for a, b in self.segments]
        pieces = [
            (s, self.segments[s][0] + a, self.segments[s][0] + b)
            for s, a, b in rank_pieces(lengths, self.rank, self.world_size, seed, epoch)
        ]
        groups = [pieces[g : g + self.mix_shards] for g in range(0, len(pieces), self.mix_shards)]
        shards = [sorted({s for s, _, _ in group}) for group in groups]
        columns = ["x", "y"] if self.row_bytes else ["x", "shape", "y"]
        window = _Window(self, rng)
        pool = None if self.cache_dir is None else ThreadPoolExecutor(4, "ncloud-fetch")

        def fetch(k: int) -> list[Future[str]]:
            """Start fetching group k's shards (one at a time without a cache: nothing to do)."""
            if k >= len(groups):
                return []
            if pool is None:
                return [_done(self._fetch(s)) for s in shards[k]]
            return [pool.submit(self._fetch, s) for s in shards[k]]

        finished = False
        try:
            ahead = fetch(0)
            for k, group in enumerate(groups):
                paths = [f.result() for f in ahead]
                ahead = fetch(k + 1)  # the next group downloads while this one is read
                if self.cache_dir is not None and self.cache_max_bytes is not None:
                    used = shards[k] + (shards[k + 1] if k + 1 < len(groups) else [])
                    keep = [self.index.shards[s].sha256 for s in used]
                    evict(self.cache_dir, self.cache_max_bytes, keep=keep)
                with contextlib.ExitStack() as stack:
                    files = {
                        s: self._open(s, p, stack) for s, p in zip(shards[k], paths, strict=True)
                    }
                    for s, rg, lo, hi in _blocks(files, group, rng):
                        table = files[s].read_row_group(rg, columns=columns, use_threads=False)
                        window.add(table.slice(lo, hi - lo))
                        if window.bytes >= self.buffer_bytes:
                            yield from window.emit(last=False)
            finished = True
        finally:  # on an early stop, do not wait for downloads nobody needs now
            if pool is not None:
                pool.shutdown(wait=finished, cancel_futures=True)
        yield from window.emit(last=True)


def _done(value: str) -> Future[str]:
    future: Future[str] = Future()
    future.set_result(value)
    return future


def _blocks(
    files: Mapping[int, pq.ParquetFile], group: Sequence[Piece], rng: np.random.Generator | None
) -> list[tuple[int, int, int, int]]:
    """(shard, row group, first, end row in it) covering the group's pieces, shuffled."""
    blocks = []
    for s, start, stop in group:
        pos = 0
        for rg in range(files[s].metadata.num_row_groups):
            n = files[s].metadata.row_group(rg).num_rows
            lo, hi = max(start, pos), min(stop, pos + n)
            if lo < hi:
                blocks.append((s, rg, lo - pos, hi - pos))
            pos += n
    if rng is not None:
        rng.shuffle(blocks)
    return blocks


class _Window:
    """The shuffle window: blocks of rows in, shuffled batches out."""

    def __init__(self, loader: ShardLoader, rng: np.random.Generator | None) -> None:
        self.loader, self.rng = loader, rng
        self.xs: list[Any] = []  # uint8 [n, row_bytes] arrays, or lists of per-row arrays
        self.ys: list[np.ndarray] = []
        self.bytes = self.batch_no = 0
        self.starts = np.zeros(1, np.int64)  # where each block begins, during emit
        self.flat: list[np.ndarray] = []  # all rows, during emit (variable shapes only)

    def add(self, table: pa.Table) -> None:
        ld = self.loader
        if ld.row_bytes:
            x: Any = _fixed_rows(table.column("x"), ld.row_bytes)
            self.bytes += x.nbytes
        else:
            x = [
                np.frombuffer(b, ld.dtype).reshape(shape)
                for b, shape in zip(
                    table.column("x").to_pylist(), table.column("shape").to_pylist(), strict=True
                )
            ]
            self.bytes += sum(v.nbytes for v in x)
        self.xs.append(x)
        self.ys.append(_labels(table.column("y")))
        ld.peak_buffer_bytes = max(ld.peak_buffer_bytes, self.bytes)

    def _gather(self, idx: np.ndarray) -> Any:
        """Rows idx (sorted) of the window's blocks, copied once into one array."""
        if not self.loader.row_bytes:
            return [self.flat[k] for k in idx]
        out = np.empty((len(idx), self.loader.row_bytes), np.uint8)
        cuts = np.searchsorted(idx, self.starts)
        for b, block in enumerate(self.xs):
            lo, hi = cuts[b], cuts[b + 1]
            if lo < hi:
                np.take(block, idx[lo:hi] - self.starts[b], axis=0, out=out[lo:hi], mode="clip")
        return out

    def emit(self, last: bool) -> Iterator[tuple[int, Any, np.ndarray]]:
        ld, bs = self.loader, self.loader.batch_size
        ys = np.concatenate(self.ys) if self.ys else np.empty(0, np.int64)
        n, shape = len(ys), ld.index.shape or ()
        self.starts = np.cumsum([0] + [len(x) for x in self.xs])
        self.flat = [] if ld.row_bytes else list(itertools.chain(*self.xs))
        order = self.rng.permutation(n) if self.rng is not None else np.arange(n)
        full = n // bs * bs
        for i in range(0, n if last and not ld.drop_last else full, bs):
            idx = order[i : i + bs]
            xb = self._gather(np.sort(idx))  # block by block, then back in the random order
            if self.rng is not None:
                back = np.argsort(np.argsort(idx))
                xb = xb.take(back, axis=0) if ld.row_bytes else [xb[k] for k in back]
            if ld.row_bytes:
                xb = xb.view(ld.dtype).reshape(len(idx), *shape)
            yield self.batch_no, xb, ys[idx]
            self.batch_no += 1
        rest = np.sort(order[full:]) if not last else order[:0]
        kept: Any = self._gather(rest)
        self.xs, self.ys = ([kept], [ys[rest]]) if len(rest) else ([], [])
        self.bytes = kept.nbytes if ld.row_bytes else sum(v.nbytes for v in kept)
