"""The host side's view of a sandbox's processes and files: its process tree, memory, the
one thread that starts bubblewrap, and emptying a folder without following a link."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def tree_pids(pid: int) -> list[int]:
    """A process and all its live descendants (from /proc; zombies left out)."""
    found, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        with contextlib.suppress(OSError, ValueError, IndexError):
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [
                    int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()
                ]
            if state != "Z":
                found.append(p)
    return found


def rss_of(pids: list[int]) -> int:
    """Resident bytes of these processes."""
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def empty(path: str) -> None:
    """Remove everything in a folder but the folder (it may be a mount), following no link."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for entry in list(os.scandir(fd)):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.name, dir_fd=fd)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)


_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen from one thread that lives as long as the process.

    bwrap's --die-with-parent is PR_SET_PDEATHSIG, which fires when the *thread* that
    started it ends; a sandbox started from a short-lived thread would die with it.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(1, thread_name_prefix="ncloud-sandbox-spawner")
    proc: subprocess.Popen[bytes] = _spawner.submit(
        lambda: subprocess.Popen(args, **kwargs)
    ).result()
    return proc
