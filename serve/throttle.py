"""Who is asking too often with a bad token: failed authentication is throttled.

Every failed check is counted against the client's address and the token id it named (the
`nc_<id>_...` part, public by design). A key with more than `limit` failures in the last
minute is refused with 429 and Retry-After before its token is checked again, so a flood
of guesses costs the store nothing. A header that passed in this process within
`remember_s` is let through anyway: a valid token is never slowed by someone else's
failures from the same address, and only a token never seen here waits out the minute.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from ncloud.errors import TooManyRequests, Unauthenticated

T = TypeVar("T")


class AuthCache:
    """Authorization headers that passed a check in the last `ttl_s` seconds (as hashes).

    Only successes are kept, so a bad token is refused on every request, and a revoked one
    is refused at most `ttl_s` after the revocation by whoever uses this as a cache.
    """

    def __init__(self, ttl_s: float, size: int = 1024) -> None:
        self.ttl_s, self.size = ttl_s, size
        self._until: dict[bytes, float] = {}

    @staticmethod
    def _key(header: str) -> bytes:
        return hashlib.sha256(header.encode()).digest()

    def fresh(self, header: str) -> bool:
        until = self._until.get(self._key(header))
        return until is not None and time.monotonic() < until

    def remember(self, header: str) -> None:
        if len(self._until) >= self.size:
            now = time.monotonic()
            self._until = {k: t for k, t in self._until.items() if t > now}
            if len(self._until) >= self.size:
                self._until.clear()
        self._until[self._key(header)] = time.monotonic() + self.ttl_s


def token_id(header: str) -> str | None:
    """The id part of a bearer `nc_<id>_<secret>` or `ncd_<id>_<secret>`, if it has one."""
    token = header.partition(" ")[2].strip()
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] in ("nc", "ncd") and parts[1]:
        return parts[1][:64]
    return None


class FailedAuth:
    """Failures per key in a sliding window; at most `max_keys` keys (oldest dropped)."""

    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        remember_s: float = 600.0,
        max_keys: int = 10_000,
    ) -> None:
        self.limit, self.window_s, self.max_keys = limit, window_s, max_keys
        self.good = AuthCache(remember_s, size=max_keys)
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def keys(address: str | None, header: str) -> list[str]:
        found = [f"address {address or 'unknown'}"]
        named = token_id(header)
        return [*found, f"token {named}"] if named else found

    def wait_s(self, keys: list[str]) -> float:
        """Seconds until every key is under its limit again (0 when it is now)."""
        now, wait = time.monotonic(), 0.0
        with self._lock:
            for key in keys:
                times = self._failures.get(key)
                if times is None:
                    continue
                while times and times[0] <= now - self.window_s:
                    times.popleft()
                if len(times) >= self.limit:
                    wait = max(wait, times[-self.limit] + self.window_s - now)
        return wait

    def failed(self, keys: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                times = self._failures.pop(key, None) or deque(maxlen=self.limit)
                times.append(now)
                self._failures[key] = times  # re-inserted: the dict's order is last failure
            while len(self._failures) > self.max_keys:
                del self._failures[next(iter(self._failures))]

    def check(self, address: str | None, header: str, authenticate: Callable[[], T]) -> T:
        """authenticate()'s answer, unless the caller is throttled (TooManyRequests); its
        Unauthenticated counts as one failure for the address and the token id."""
        keys = self.keys(address, header)
        if header and not self.good.fresh(header):
            wait = self.wait_s(keys)
            if wait > 0:
                raise TooManyRequests(
                    f"too many failed authentications from here or for this token: over "
                    f"{self.limit} a minute; retry after {math.ceil(wait)} s",
                    retry_after_s=math.ceil(wait),
                )
        try:
            found = authenticate()
        except Unauthenticated:
            if header:  # no token at all costs nothing to refuse
                self.failed(keys)
            raise
        if header:
            self.good.remember(header)
        return found
