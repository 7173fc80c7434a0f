"""A server being stopped says so first, in its home, to the controller it is about to end.

`server stop` ends the head's processes with SIGTERM, then SIGKILL, in no set order: a
run's training process may go before the controller and report a stop or a crash. That is
the stop's doing, not the run's, so while the mark is there the scheduler records none of
it: the run is left as it was, and the next start resumes it ("the server went down under
it"), spending no restart.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

MARK = "stopping"


def begin(home: Path) -> None:
    (home / MARK).write_text("")


def end(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (home / MARK).unlink()


def under_way(home: Path) -> bool:
    return (home / MARK).exists()
