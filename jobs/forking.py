"""Fork servers for user code: a child forks from a warm process in milliseconds.

Inside a Ray worker the main module is Ray's own worker script; multiprocessing would
import it again in every child (about 0.4 s each). Children here never need it, so it
is hidden while a fork server starts and while a child is started.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
from collections.abc import Iterator
from multiprocessing.context import ForkServerContext
from typing import Any

_lock = threading.Lock()


def context(preload: list[str]) -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    return ctx


@contextlib.contextmanager
def without_main() -> Iterator[None]:
    """Hide __main__'s origin so multiprocessing does not re-import it in the child."""
    main: Any = sys.modules.get("__main__")
    with _lock:
        saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
        for key in saved:
            setattr(main, key, None) if key == "__spec__" else delattr(main, key)
        try:
            yield
        finally:
            for key, value in saved.items():
                setattr(main, key, value)


def start(process: Any) -> None:
    with without_main():
        process.start()


def warm() -> None:
    """Start the fork server now, off the request path (its preload takes seconds)."""
    from multiprocessing import forkserver

    with without_main():
        forkserver.ensure_running()
