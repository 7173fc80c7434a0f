"""A bounded hand-over between a producer thread and its consumer that either side can
end: the producer's failure is raised in the consumer, and a set `stop` frees both."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def pump(items: Iterator[Any], out: queue.Queue[Any], stop: threading.Event) -> None:
    """Run in a thread: move items into a bounded queue, then an end mark or the failure."""
    try:
        for item in items:
            if not _put(out, item, stop):
                return
        _put(out, _END, stop)
    except BaseException as exc:  # handed to the consumer, which raises it
        _put(out, _Failure(exc), stop)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def drain(q: queue.Queue[Any], stop: threading.Event) -> Iterator[Any]:
    while not stop.is_set():
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is _END:
            return
        if isinstance(item, _Failure):
            raise item.exc
        yield item
