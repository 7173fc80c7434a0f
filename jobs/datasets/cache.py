"""Node-local cache of dataset shards, keyed by sha256 and safe for concurrent fillers."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import fsspec

from ncloud.errors import Conflict, InvalidInput

CHUNK = 8 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Layout under cache_dir:
#   shards/<sha256>.parquet   the shard, appears only by an atomic rename of a verified download
#   shards/<sha256>.ok        completion marker {"file", "size", "mtime_ns", "ino"}; its mtime is
#                             the last use (LRU); a shard without a matching marker is not trusted
#   locks/<sha256>.lock       flock'ed by whoever fills or evicts that shard; never deleted, so
#                             two processes can never lock two different inodes of one name


def _paths(cache_dir: str | Path, sha256: str, suffix: str) -> tuple[Path, Path, Path]:
    if not _SHA256.fullmatch(sha256):
        raise InvalidInput(f"{sha256!r} is not a sha256 hex digest")
    root = Path(cache_dir).expanduser()
    (root / "shards").mkdir(parents=True, exist_ok=True)
    (root / "locks").mkdir(parents=True, exist_ok=True)
    return (
        root / "shards" / f"{sha256}{suffix}",
        root / "shards" / f"{sha256}.ok",
        root / "locks" / f"{sha256}.lock",
    )


@contextlib.contextmanager
def locked(lock_path: Path, blocking: bool = True) -> Iterator[bool]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _is_complete(data: Path, marker: Path) -> bool:
    """The marker exists and the file is exactly the one it was written for."""
    try:
        recorded = json.loads(marker.read_text())
        return all(recorded.get(k) == v for k, v in _stat_key(data).items())
    except (OSError, ValueError, AttributeError):
        return False


def file_sha256(path: str | Path) -> str:
    """sha256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, tmp: Path) -> str:
    digest = hashlib.sha256()
    with fsspec.open(url, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest()


def _write_marker(data: Path, marker: Path) -> None:
    tmp = marker.with_name(f".{marker.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({"file": data.name, **_stat_key(data)}))
    os.replace(tmp, marker)


def ensure_local(
    shard_url: str, sha256: str, cache_dir: str | Path, *, verify: bool = False
) -> Path:
    """A local, complete copy of the shard whose content hash is sha256; downloads it if needed.

    A cached file whose size, mtime or inode differ from its marker is fetched again;
    verify=True also re-hashes a cached file that looks intact. Raises Conflict when the
    stored shard no longer has the sha256 the index promised (the dataset changed).
    """
    suffix = Path(shard_url.rstrip("/").rsplit("/", 1)[-1]).suffix or ".bin"
    data, marker, lock = _paths(cache_dir, sha256, suffix)
    if not verify and _is_complete(data, marker):
        _touch(marker)
        return data
    with locked(lock):
        if _is_complete(data, marker) and (not verify or file_sha256(data) == sha256):
            _touch(marker)
            return data
        marker.unlink(missing_ok=True)
        tmp = data.with_name(f".{sha256}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            got = _download(shard_url, tmp)
            if got != sha256:
                raise Conflict(
                    f"shard {shard_url} has sha256 {got}, the dataset index says {sha256}: "
                    "the dataset changed after ingest; ingest it again"
                )
            os.replace(tmp, data)
        finally:
            tmp.unlink(missing_ok=True)
        _write_marker(data, marker)
    return data


def _touch(marker: Path) -> None:
    # OSError: evicted between the check and now; the caller holds the path already
    with contextlib.suppress(OSError):
        os.utime(marker)


def cached_bytes(cache_dir: str | Path) -> int:
    """Bytes of complete shards in the cache."""
    total = 0
    for marker in Path(cache_dir).expanduser().glob("shards/*.ok"):
        try:
            total += int(json.loads(marker.read_text())["size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return total


def evict(cache_dir: str | Path, max_bytes: int, keep: Iterable[str] = ()) -> int:
    """Delete least recently used shards until the cache holds at most max_bytes; bytes freed.

    Shards in keep (sha256s) and shards another process is filling right now stay.
    """
    root = Path(cache_dir).expanduser()
    entries: list[tuple[float, str, Path, int]] = []
    for marker in root.glob("shards/*.ok"):
        try:
            info = json.loads(marker.read_text())
            entries.append(
                (marker.stat().st_mtime, marker.stem, root / "shards" / info["file"], info["size"])
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    total = sum(e[3] for e in entries)
    freed = 0
    keep_set = set(keep)
    for _, sha, data, size in sorted(entries):
        if total - freed <= max_bytes:
            break
        if sha in keep_set:
            continue
        with locked(root / "locks" / f"{sha}.lock", blocking=False) as got:
            if not got:
                continue
            # marker first: a reader that already opened the file keeps reading its inode
            (root / "shards" / f"{sha}.ok").unlink(missing_ok=True)
            data.unlink(missing_ok=True)
            freed += size
    return freed
