"""The processes `ncloud server start` starts: the Ray head in a session of its own, whose
every member `stop` ends (and nothing else: never a machine-wide `ray stop`)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

STOP_TIMEOUT_S = 30.0


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); waitpid tells the difference for our own children.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def session_pids(sid: int) -> list[int]:
    """Every process in the session the head was started in: exactly what `start` started."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def kill_session(pid: int) -> None:
    """SIGTERM the head's whole session, then SIGKILL whatever is left after a short grace."""
    for signum, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, STOP_TIMEOUT_S)):
        for member in session_pids(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signum)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            alive(pid)  # reaps the head if it is our child
            if not [p for p in session_pids(pid) if running(p)]:
                return
            time.sleep(0.2)


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
