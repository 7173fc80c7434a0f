"""How long a new input would wait in a replica, from how fast it has been answering.

A replica refuses (503 with Retry-After) an input that would wait longer than a budget, not
only one past --max-queue: under a burst the machine is shared with the proxy and the
clients, the replica drains slower than it does alone, and a queue sized for a quiet
machine would keep its last inputs waiting for many seconds. The rate is what the replica
actually achieved while it was busy in the last few seconds, so it includes every cost
(decoding, batching, the forward, a CPU shared with others).
"""

from __future__ import annotations

import time
from collections import deque

WAIT_BUDGET_S = 0.5  # the longest a newly admitted input should wait for its answer


class Drain:
    """Answers of a busy replica in the last `window_s`: (when, seconds since the answer
    before, inputs answered), counted only while inputs were waiting all along. Their sums
    are kept as they come and go: the check runs twice a request, at a thousand a second."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float, int]] = deque()
        self._seconds = 0.0  # the samples' time, added up
        self._inputs = 0  # the samples' inputs, added up
        self._last: float | None = None
        self._busy = False
        self._per_input: float | None = None  # the last rate seen, however old

    def answered(self, inputs: int, still_waiting: int, now: float | None = None) -> None:
        """`inputs` were just answered and `still_waiting` others wait now."""
        now = time.monotonic() if now is None else now
        if self._last is not None and self._busy:
            self._samples.append((now, now - self._last, inputs))
            self._seconds += now - self._last
            self._inputs += inputs
        self._last, self._busy = now, still_waiting > 0
        self._age(now)
        if self._inputs:
            self._per_input = self._seconds / self._inputs

    def _age(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window_s:
            _, dt, n = self._samples.popleft()
            self._seconds -= dt
            self._inputs -= n
        if not self._samples:
            self._seconds, self._inputs = 0.0, 0

    def wait_s(self, inputs: int, now: float | None = None) -> float | None:
        """Seconds until `inputs` waiting inputs are all answered at the recent busy rate;
        None when there is no recent busy time to judge by."""
        self._age(time.monotonic() if now is None else now)
        if not self._inputs:
            return None
        return inputs * self._seconds / self._inputs

    def admits(self, waiting: int, more: int, unknown: int, now: float | None = None) -> bool:
        """Whether `more` inputs may join `waiting` ones within the budget. Into an empty
        queue always (one request is never refused for the speed of others); with no recent
        rate to judge by (the start of a burst), up to `unknown` inputs (one batch), or as
        many as the last rate seen would answer within the budget."""
        if waiting == 0:
            return True
        wait = self.wait_s(waiting + more, now)
        if wait is not None:
            return wait <= WAIT_BUDGET_S
        if waiting + more <= unknown:
            return True
        return self._per_input is not None and (waiting + more) * self._per_input <= WAIT_BUDGET_S
