"""Benchmark: a burst of 1,000 concurrent predictions at one replica; every request must get a
200 or a 503 with Retry-After, fast (p99 under 2 s), none left to time out.

In the same run on the same PNGs: the platform's deployment (--max-queue 256), the peer it
replaces (plain Ray Serve with @serve.batch, max_ongoing_requests 256, Serve's defaults
otherwise), and the ceiling: a bare uvicorn app that reads each body and answers a fixed
200, the same connections with nothing of ours (or Serve's) in the way. Each replica's
memory (RSS) is read before and after its burst, and each target must answer normally after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python bench/burst.py` as well as `python -m bench.burst`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import aiohttp
import httpx
import numpy as np

from bench.common import free_port, private_server, verdict, wait_for
from bench.http_load import CONTENT_TYPE, Input, K, Target, check_answer, multipart
from bench.serve import (
    PEERS,
    SPEC,
    PlainNet,
    connect_ray,
    model_files,
    peer_apps,
    read_inputs,
    serve_proxy,
    train_and_deploy,
)
from examples.digits import make_digits
from jobs.models.deployments import app_name

RAY_WORKER_NICENESS = 15  # Ray's default for its worker processes (RAY_worker_niceness)
TIMEOUT_S = 30.0  # what a client gives up after (the flood used 30 s)
P99_TARGET_S = 2.0

# The ceiling: read the body, answer a fixed top-k. Run as `python -c` on a free port.
CEILING_APP = """
import sys, uvicorn
ANSWER = b'{"predictions": [{"input": "x", "top": []}]}'
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", backlog=4096)
"""


@dataclass
class Burst:
    target: str
    latencies: list[float] = field(default_factory=list)  # every answer, 200 or not
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    replica_s: dict[str, list[float]] = field(default_factory=dict)  # its Server-Timing
    slow: list[tuple[bool, str]] = field(default_factory=list)  # (a connection's first?, kind)
    statuses: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    generator_cpu_s: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    after_ok: int = 0
    after_sent: int = 0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def timeouts(self) -> int:
        return self.statuses["timeout"]

    @property
    def other_failures(self) -> int:
        fine = {"200", "503+Retry-After", "timeout"}
        return sum(n for kind, n in self.statuses.items() if kind not in fine)


async def _one(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
               body: bytes, burst: Burst, first: bool) -> None:  # fmt: skip
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
            kind = str(r.status)
            timing = r.headers.get("Server-Timing", "")
            if timing.startswith("replica;dur="):
                burst.replica_s.setdefault(kind, []).append(float(timing[12:]) / 1e3)
            if r.status == 503 and r.headers.get("Retry-After"):
                kind = "503+Retry-After"
    except TimeoutError:
        kind = "timeout"
    except aiohttp.ClientError as exc:
        kind = type(exc).__name__
        if len(burst.first_errors) < 3:
            burst.first_errors.append(f"{kind}: {exc}")
    took = time.perf_counter() - started
    burst.latencies.append(took)
    burst.by_kind.setdefault(kind, []).append(took)
    if took > P99_TARGET_S:
        burst.slow.append((first, kind))
    burst.statuses[kind] += 1


async def _burst(target: Target, bodies: list[bytes], clients: int, each: int) -> Burst:
    """`clients` connections at once, each sending `each` requests one after another."""
    burst = Burst(target.name)
    url, headers = f"{target.url}?k={K}", {**target.headers, "content-type": CONTENT_TYPE}

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        for i in range(each):
            body = bodies[(n * each + i) % len(bodies)]
            await _one(session, url, headers, body, burst, i == 0)

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*[client(n, session) for n in range(clients)])
        burst.elapsed = time.perf_counter() - started
        burst.generator_cpu_s = time.process_time() - cpu
    return burst


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) << 10
        except OSError:
            pass
    return total


def _replica_pids(app: str) -> list[int]:
    """The pids of the Serve replicas of application `app` (SERVE_REPLICA::<app>#...)."""
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
    prefix = f"SERVE_REPLICA::{app}#"
    return [int(a.pid) for a in alive if a.pid and str(a.name or "").startswith(prefix)]


def _after(target: Target, inputs: list[Input], burst: Burst, n: int = 20) -> None:
    """n ordinary requests once the burst is over: each must be a correct 200."""
    with httpx.Client(timeout=TIMEOUT_S) as client:
        for item in inputs[:n]:
            r = client.post(f"{target.url}?k={K}", headers={**target.headers,
                            "content-type": CONTENT_TYPE}, content=multipart(item))  # fmt: skip
            burst.after_sent += 1
            if r.status_code == 200 and check_answer(r.json(), item) is None:
                burst.after_ok += 1


def _measure(target: Target, inputs: list[Input], args: argparse.Namespace,
             pids: list[int]) -> Burst:  # fmt: skip
    bodies = [multipart(item) for item in inputs]
    rss_before = _rss(pids)
    burst = asyncio.run(_burst(target, bodies, args.clients, args.each))
    burst.rss_before, burst.rss_after = rss_before, _rss(pids)
    time.sleep(1.0)  # let the last 503s' retries window pass
    if target.name != "ceiling":  # its fixed answer is no prediction
        _after(target, inputs, burst)
    print(f"  {target.name:<15} {burst.elapsed:6.1f}s  {dict(burst.statuses)}  "
          f"p99 {burst.pct(99):.2f}s", flush=True)  # fmt: skip
    return burst


def _ceiling() -> tuple[subprocess.Popen[bytes], Target]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", CEILING_APP, str(port)])
    url = f"http://127.0.0.1:{port}/"
    wait_for(lambda: _answers(url), 30, "the ceiling app to listen")
    return proc, Target("ceiling", url, {})


def _answers(url: str) -> bool | None:
    try:
        return httpx.post(url, content=b"x", timeout=2).status_code == 200 or None
    except httpx.HTTPError:
        return None


def run(args: argparse.Namespace, data: Path) -> list[Burst]:
    spec_text = SPEC.read_text()
    bursts: list[Burst] = []
    with private_server(cpus=2, keep=args.keep) as server:
        setup = train_and_deploy(server, data, spec_text, args.timeout)
        model_id = int(setup["model"]["id"])
        meta, state = model_files(server, model_id)
        inputs = read_inputs(data, PlainNet(spec_text, meta, state))
        url = str(setup["deploy"]["url"])
        token = str(setup["deploy"]["token"])
        ray = connect_ray(server)
        from ray import serve

        name = "plain-batched"
        serve.run(peer_apps(spec_text, meta, state)[name], name=name, route_prefix=PEERS[name])
        # The peer as a Ray user has it: through Serve's own proxy (not the platform's front).
        peer = Target(name, f"{serve_proxy(server)}{PEERS[name]}", {})
        platform = Target("platform", url, {"Authorization": f"Bearer {token}"})
        print(f"burst: {args.clients} connections at once x {args.each} requests each "
              f"({args.clients * args.each} per target), {TIMEOUT_S:g}s client time-out",
              flush=True)  # fmt: skip
        # Ray runs its workers (the proxy, the replicas) at nice 15; the load generator and
        # the ceiling take the same, so neither is favoured over the server by the kernel.
        os.nice(RAY_WORKER_NICENESS - os.nice(0))
        ceiling, ceiling_target = _ceiling()
        try:
            for target, app in (
                (platform, app_name(model_id)),
                (peer, name),
                (ceiling_target, ""),
            ):
                if target.name not in args.targets:
                    continue
                pids = _replica_pids(app) if app else [ceiling.pid]
                bursts.append(_measure(target, inputs, args, pids))
        finally:
            ceiling.terminate()
            ceiling.wait(30)
            serve.delete(name)
            ray.shutdown()
    return bursts


def report(bursts: list[Burst]) -> int:
    print(f"\n{'target':<15} {'200':>6} {'503+RA':>7} {'t/o':>5} {'other':>6} {'p50 s':>7} "
          f"{'p99 s':>7} {'max s':>7} {'RSS MiB':>13} {'after':>7} {'gen CPU':>8}")  # fmt: skip
    for b in bursts:
        rss = f"{b.rss_before >> 20}->{b.rss_after >> 20}" if b.rss_before else "-"
        after = f"{b.after_ok}/{b.after_sent}" if b.target != "ceiling" else "-"
        print(f"{b.target:<15} {b.statuses['200']:>6} {b.statuses['503+Retry-After']:>7} "
              f"{b.timeouts:>5} {b.other_failures:>6} {b.pct(50):>7.2f} {b.pct(99):>7.2f} "
              f"{max(b.latencies):>7.2f} {rss:>13} {after:>7} "
              f"{b.generator_cpu_s / b.elapsed:>8.0%}")  # fmt: skip
        kinds = ", ".join(
            f"{kind} p50 {np.percentile(v, 50):.2f}s p99 {np.percentile(v, 99):.2f}s"
            for kind, v in sorted(b.by_kind.items())
        )
        print(f"    {kinds}")
        inside = ", ".join(
            f"{kind} p50 {np.percentile(v, 50):.2f}s p99 {np.percentile(v, 99):.2f}s"
            for kind, v in sorted(b.replica_s.items())
        )
        if inside:
            print(f"    of which in the replica: {inside}")
        if b.slow:
            firsts = sum(first for first, _ in b.slow)
            print(f"    over {P99_TARGET_S:g}s: {len(b.slow)}, of which {firsts} were their "
                  "connection's first request")  # fmt: skip
        for error in b.first_errors:
            print(f"    {b.target}: {error}")
    print(
        "503+RA: a 503 with Retry-After; t/o: no answer within the client's time-out; "
        "after: correct answers of 20 ordinary requests after the burst; gen CPU: the load "
        "generator's own CPU time over the burst's wall time (of one core)"
    )
    by = {b.target: b for b in bursts}
    p = by["platform"]
    for other in ("plain-batched", "ceiling"):
        if other in by:
            print(f"p99 platform / {other} = {p.pct(99) / by[other].pct(99):.2f}")
    met = (
        p.pct(99) < P99_TARGET_S
        and p.timeouts == 0
        and p.other_failures == 0
        and p.after_ok == p.after_sent
    )
    print(f"platform: p99 {p.pct(99):.2f}s (target < {P99_TARGET_S:g}s), {p.timeouts} time-outs, "
          f"{p.other_failures} other failures (targets 0), {p.after_ok}/{p.after_sent} correct "
          f"after: {verdict(met)}")  # fmt: skip
    return 0 if met else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1000, help="connections opened at once")
    parser.add_argument("--each", type=int, default=5, help="requests per connection")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to train or deploy")
    parser.add_argument("--keep", action="store_true", help="keep the server's NCLOUD_HOME")
    parser.add_argument(
        "--targets", default="platform,plain-batched,ceiling", help="which (platform always)"
    )
    args = parser.parse_args()
    args.targets = {"platform", *args.targets.split(",")}
    if not 1 <= args.clients <= 5000 or not 1 <= args.each <= 100:
        parser.error("--clients must be 1..5000 and --each 1..100")
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        data = Path(tmp) / "digits"
        make_digits(data)
        raise SystemExit(report(run(args, data)))


if __name__ == "__main__":
    main()
