"""Reading what a sandbox wrote, on the trusted side, without following its links.

A sandbox owns its out/ folder and volumes, so anything there may be a symlink to a host
file (the Ray token, the store) or a FIFO that blocks a reader. Every path is opened one
component at a time with O_NOFOLLOW, and only regular files are read.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ncloud.errors import InvalidInput

CHUNK = 8 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Found:
    name: str  # relative to the root, with "/"
    size: int
    mtime_ns: int


def walk(root: Path, max_entries: int = 100_000, max_depth: int = 32) -> list[Found]:
    """The regular files under root (symlinks, devices and FIFOs are left out); InvalidInput
    past max_entries entries of any kind, and folders deeper than max_depth are not entered."""
    found: list[Found] = []
    todo, seen = [""], 0
    while todo:
        rel = todo.pop()
        try:
            fd = open_dir(root, rel)
        except (OSError, InvalidInput):
            continue
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    seen += 1
                    if seen > max_entries:
                        raise InvalidInput(f"the run left over {max_entries} files and folders")
                    name = f"{rel}/{entry.name}" if rel else entry.name
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:  # gone since it was listed
                        continue
                    if stat.S_ISDIR(st.st_mode) and name.count("/") < max_depth:
                        todo.append(name)
                    elif stat.S_ISREG(st.st_mode):
                        found.append(Found(name, st.st_size, st.st_mtime_ns))
        finally:
            os.close(fd)
    return sorted(found, key=lambda f: f.name)


def open_dir(root: Path, rel: str) -> int:
    """An fd of root/rel, reached without following any link below root."""
    fd = os.open(root, _DIR)
    try:
        for part in [p for p in rel.split("/") if p]:
            if part in (".", ".."):
                raise InvalidInput(f"path {rel!r} leaves its folder")
            child = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def chunks(root: Path, rel: str, max_bytes: int = 1 << 62) -> Iterator[bytes]:
    """The bytes of the regular file root/rel; InvalidInput for a link or anything else."""
    head, _, name = rel.rpartition("/")
    dir_fd = open_dir(root, head)
    try:
        try:
            fd = os.open(name, _FILE, dir_fd=dir_fd)
        except OSError as exc:
            raise InvalidInput(
                f"{rel} is not a regular file the run wrote ({exc.strerror})"
            ) from exc
    finally:
        os.close(dir_fd)
    with contextlib.closing(os.fdopen(fd, "rb")) as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{rel} is not a regular file")
        os.set_blocking(fd, True)
        sent = 0
        while chunk := handle.read(CHUNK):
            sent += len(chunk)
            if sent > max_bytes:
                raise InvalidInput(f"{rel} is over {max_bytes} bytes")
            yield chunk


def read(root: Path, rel: str, max_bytes: int) -> bytes:
    return b"".join(chunks(root, rel, max_bytes))
