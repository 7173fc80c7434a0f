"""The load generator of bench/serve.py: aiohttp, each request body encoded once, answers checked.

On 2 cores the generator shares the machine with the server, so it stays lean: no per-request
encoding, one event loop, and it reports its own CPU time per level.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

K = 5  # top-k asked of every target
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]


@dataclass
class Level:
    target: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = float("nan")
    round_rps: list[float] = field(default_factory=list)  # each pooled round's requests/s
    generator_cpu_s: float = 0.0  # the load generator's own CPU time (this process)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else float("nan")

    def add(self, other: Level) -> None:
        """Pool another run of the same target and level into this one."""
        self.latencies += other.latencies
        self.errors += other.errors
        self.elapsed += other.elapsed
        self.generator_cpu_s += other.generator_cpu_s
        self.round_rps.append(other.rps)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else float("nan")


@dataclass(frozen=True)
class Input:
    name: str
    data: bytes
    expected: int | None  # the in-process top-1 index; None when top-1 and top-2 nearly tie


def check_answer(body: Any, item: Input) -> str | None:
    """None when the body is a top-k answer whose top-1 is the in-process net's; else why."""
    try:
        top = body["predictions"][0]["top"]
        if len(top) != K:
            return f"{item.name}: {len(top)} classes in the answer, not {K}"
        if item.expected is not None and int(top[0]["index"]) != item.expected:
            return f"{item.name}: top-1 {top[0]['index']}, the net says {item.expected}"
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return f"{item.name}: malformed answer {str(body)[:200]!r} ({exc!r})"
    return None


BOUNDARY = "ncloud-bench-7f3a"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(item: Input) -> bytes:
    """The request body for one input, encoded once: the load generator only sends bytes."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{item.name}"\r\nContent-Type: image/png\r\n\r\n'
    )
    return head.encode() + item.data + f"\r\n--{BOUNDARY}--\r\n".encode()


async def _one(
    session: aiohttp.ClientSession, target: Target, item: Input, body: bytes
) -> tuple[float, str | None]:
    started = time.perf_counter()
    try:
        async with session.post(
            f"{target.url}?k={K}",
            data=body,
            headers={**target.headers, "content-type": CONTENT_TYPE},
        ) as r:
            raw = await r.read()
        took = time.perf_counter() - started
        if r.status != 200:
            return took, f"{item.name}: HTTP {r.status} {raw[:300]!r}"
        return took, check_answer(json.loads(raw), item)
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        return time.perf_counter() - started, f"{item.name}: {type(exc).__name__}: {exc}"


async def _drive(
    target: Target, inputs: list[Input], concurrency: int, total: int, budget_s: float
) -> Level:
    """`total` requests from `concurrency` workers, each sending its next request on an
    answer (aiohttp, bodies encoded ahead: a lean generator on a machine it shares)."""
    level = Level(target.name, concurrency)
    bodies = [multipart(item) for item in inputs]
    counter = iter(range(total))
    deadline = time.perf_counter() + budget_s

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                level.errors.append(f"request {i} not sent: the level ran past {budget_s:g}s")
                continue
            n = i % len(inputs)
            took, error = await _one(session, target, inputs[n], bodies[n])
            if error is None:
                level.latencies.append(took)
            else:
                level.errors.append(error)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*[worker(session) for _ in range(concurrency)])
        level.elapsed = time.perf_counter() - started
        level.generator_cpu_s = time.process_time() - cpu
    return level


def drive(
    target: Target, inputs: list[Input], concurrency: int, total: int, budget_s: float
) -> Level:
    return asyncio.run(_drive(target, inputs, concurrency, total, budget_s))
