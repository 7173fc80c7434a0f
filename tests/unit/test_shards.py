"""Shards and index.json round trips, ingest parts, and the node-local shard cache."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

import jobs.datasets.cache
from jobs.datasets.cache import cached_bytes, ensure_local, evict
from jobs.datasets.shards import ShardWriter, read_index, write_index, write_part
from ncloud.errors import Conflict, InvalidInput, NotFound


def memory_url() -> str:
    return f"memory://ds-{uuid.uuid4().hex}"


def example(kind: str, i: int) -> tuple[bytes, list[int]]:
    if kind == "image":
        return np.full((5, 4, 3), i % 256, np.uint8).tobytes(), [5, 4, 3]
    if kind == "text":
        text = ("héllo " * (i % 4 + 1)).encode()
        return text, [len(text)]
    if kind == "audio":
        return np.arange(6 * 2, dtype=np.int16).tobytes(), [6, 2]
    return np.array([i, i + 0.5, -1], np.float32).tobytes(), [3]


def read_rows(url: str) -> list[dict[str, object]]:
    fs, root = fsspec.core.url_to_fs(url)
    rows: list[dict[str, object]] = []
    for s in read_index(url).shards:
        data = fs.cat_file(f"{root}/shards/{s.name}")
        assert hashlib.sha256(data).hexdigest() == s.sha256 and len(data) == s.bytes
        with fs.open(f"{root}/shards/{s.name}", "rb") as f:
            rows += pq.read_table(f).to_pylist()
    return rows


@pytest.mark.parametrize("kind", ["image", "text", "audio", "features"])
def test_round_trip_each_kind(kind: str) -> None:
    url = memory_url()
    with ShardWriter(url, kind, ["cat", "dog"], rows_per_shard=7) as writer:
        for i in range(20):
            writer.add(*example(kind, i), y=i % 2, row=i + 1)
    index = read_index(url)
    assert (index.kind, index.rows, index.classes) == (kind, 20, ["cat", "dog"])
    assert index.dtype == {"image": "uint8", "text": "utf8", "audio": "int16"}.get(kind, "float32")
    assert index.class_counts == {0: 10, 1: 10}
    assert [s.rows for s in index.shards] == [7, 7, 6]
    assert [s.name for s in index.shards] == [f"part-0000{i}.parquet" for i in range(3)]
    assert index.shape == (None if kind == "text" else tuple(example(kind, 0)[1]))
    assert (
        index.checksum
        == hashlib.sha256("".join(s.sha256 for s in index.shards).encode()).hexdigest()
    )
    rows = read_rows(url)
    assert [r["row"] for r in rows] == list(range(1, 21))
    for i, r in enumerate(rows):
        assert (r["x"], r["shape"], r["y"]) == (*example(kind, i), i % 2)


def test_local_folder_and_no_temporary_files(tmp_path: Path) -> None:
    with ShardWriter(str(tmp_path), "features", None) as writer:
        writer.add(*example("features", 1), y=-1, row=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "shards"]
    assert read_index(str(tmp_path)).class_counts == {-1: 1}


def test_a_crash_before_close_leaves_no_index(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(str(tmp_path), "image", None, 2) as writer:
        for i in range(5):
            writer.add(*example("image", i), y=0, row=i)
        raise RuntimeError("ingest died")
    assert not (tmp_path / "index.json").exists()
    with pytest.raises(NotFound):
        read_index(str(tmp_path))
    unclosed = ShardWriter(memory_url(), "image", None)
    unclosed.add(*example("image", 0), y=0, row=0)
    with pytest.raises(NotFound):
        read_index(unclosed.ds_url)


def test_parts_written_apart_then_one_index() -> None:
    url = memory_url()
    infos = []
    for part in (3, 0):
        records = [(*example("image", i), i % 3, part * 100 + i) for i in range(5)]
        infos += write_part(url, part, records, kind="image", rows_per_shard=2)
    index = write_index(url, "image", None, infos)
    assert [s.name for s in index.shards][:3] == [f"part-00003-0000{i}.parquet" for i in range(3)]
    assert index.rows == 10 and index.class_counts == {0: 4, 1: 4, 2: 2}
    assert index.shape == (5, 4, 3) and read_index(url) == index
    with pytest.raises(InvalidInput):
        write_index(url, "image", None, infos + infos[:1])


@pytest.mark.parametrize(
    ("kind", "x", "shape", "y"),
    [
        ("image", b"\0" * 10, [2, 2, 3], 0),  # 12 bytes needed
        ("image", b"\0" * 8, [2, 2, 2], 0),  # 2 channels
        ("audio", b"\0" * 4, [2, 1], 0),  # int16: 4 bytes is right, label is not
        ("features", b"\0" * 8, [2], 5),
    ],
)
def test_bad_records_are_refused(kind: str, x: bytes, shape: list[int], y: int) -> None:
    writer = ShardWriter(memory_url(), kind, ["a", "b"])
    with pytest.raises(InvalidInput):
        writer.add(x, shape, 2 if kind == "audio" else y, 0)
    with pytest.raises(InvalidInput):
        ShardWriter(memory_url(), "video", None)


def test_read_index_refuses_a_bad_file() -> None:
    url = memory_url()
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root}/index.json", b'{"format": 1, "kind": "image"}')
    with pytest.raises(InvalidInput, match="malformed"):
        read_index(url)


# --- the node-local cache ---------------------------------------------------------------


def source(tmp_path: Path, data: bytes, name: str = "part-00000.parquet") -> tuple[str, str]:
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


def test_cache_is_keyed_by_checksum(tmp_path: Path) -> None:
    url, sha = source(tmp_path, b"version one")
    local = ensure_local(url, sha, tmp_path / "cache")
    assert local.name == f"{sha}.parquet" and local.read_bytes() == b"version one"
    os.remove(url)  # a hit never touches storage
    assert ensure_local(url, sha, tmp_path / "cache") == local
    url, sha2 = source(tmp_path, b"version two")  # the dataset changed: a new key
    assert ensure_local(url, sha2, tmp_path / "cache").read_bytes() == b"version two"
    assert cached_bytes(tmp_path / "cache") == len(b"version one") + len(b"version two")


def test_a_corrupted_cached_file_is_fetched_again(tmp_path: Path) -> None:
    url, sha = source(tmp_path, bytes(range(256)) * 64)
    local = ensure_local(url, sha, tmp_path / "cache")
    with open(local, "r+b") as f:  # truncated: the size no longer matches the marker
        f.truncate(100)
    assert (
        hashlib.sha256(ensure_local(url, sha, tmp_path / "cache").read_bytes()).hexdigest() == sha
    )
    with open(local, "r+b") as f:  # same size, one byte flipped: only a verify finds it
        f.seek(10)
        f.write(b"\xff")
        mtime = os.stat(local).st_mtime_ns
    os.utime(local, ns=(mtime, mtime))
    assert (
        hashlib.sha256(
            ensure_local(url, sha, tmp_path / "cache", verify=True).read_bytes()
        ).hexdigest()
        == sha
    )


def test_a_changed_shard_is_a_conflict_and_never_cached(tmp_path: Path) -> None:
    url, sha = source(tmp_path, b"what the index promised")
    Path(url).write_bytes(b"something else")
    with pytest.raises(Conflict, match="changed"):
        ensure_local(url, sha, tmp_path / "cache")
    assert list((tmp_path / "cache" / "shards").iterdir()) == []
    with pytest.raises(InvalidInput):
        ensure_local(url, "../../etc/passwd", tmp_path / "cache")


def _fill(url: str, sha: str, cache: str, out: Any) -> None:
    out.put(hashlib.sha256(ensure_local(url, sha, cache).read_bytes()).hexdigest())


def test_two_processes_fill_one_shard_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.random.default_rng(0).integers(0, 256, 8 << 20, np.uint8).tobytes()
    url, sha = source(tmp_path, data)
    log = tmp_path / "downloads"

    def slow_download(url: str, tmp: Path) -> str:  # so the fillers overlap for sure
        with open(log, "a") as f:
            f.write("x")
        with open(url, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                dst.flush()
                time.sleep(0.02)
        return hashlib.sha256(Path(tmp).read_bytes()).hexdigest()

    monkeypatch.setattr(jobs.datasets.cache, "_download", slow_download)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_fill, args=(url, sha, str(tmp_path / "c"), out)) for _ in range(3)]
    for p in procs:
        p.start()
        time.sleep(0.05)  # the others arrive while the first is half way through
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    assert got == [sha] * 3 and [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text() == "x"  # one download; the others waited for it
    names = sorted(p.name for p in (tmp_path / "c" / "shards").iterdir())
    assert names == [f"{sha}.ok", f"{sha}.parquet"]


def test_evict_keeps_the_cache_under_budget_lru(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shas = []
    for i in range(3):
        url, sha = source(tmp_path, bytes([i]) * 1000, f"s{i}.parquet")
        ensure_local(url, sha, cache)
        shas.append(sha)
        time.sleep(0.01)
    ensure_local(url, shas[0], cache)  # used again: now the newest
    assert evict(cache, 2000, keep=[shas[1]]) == 1000
    left = {p.stem for p in (cache / "shards").glob("*.parquet")}
    assert left == {shas[0], shas[1]}
    assert evict(cache, 0, keep=[shas[1]]) == 1000 and cached_bytes(cache) == 1000
