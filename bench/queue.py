"""Benchmark: submit-to-first-batch latency and queue throughput, against bare Ray Jobs."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/queue.py` as well as `python -m bench.queue`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    ROOT,
    Server,
    median,
    parse_at,
    private_server,
    tenant_client,
    upload,
    verdict,
    wait_for,
)
from examples.digits import make_digits
from ncloud import responses
from ncloud.client import Client

TERMINAL = {"Completed", "Failed", "Stopped"}
RAY_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
ORDER_SLACK_S = 1.0  # a run submitted this close to another's start may miss that admission
STAMP_SPEC = '''"""Latency probe: the first training forward prints time.time() to the run's log."""
import time
from torch import nn

EPOCHS = 1
TRANSFORM = {"mean": 0.5, "std": 0.5}


class Net(nn.Module):
    def __init__(self, classes, features):
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.stamped = False

    def forward(self, x):
        if self.training and not self.stamped:
            self.stamped = True
            print(f"STAMP {time.time()}", flush=True)
        return self.fc(x.flatten(1))


def model(num_classes, input_shape):
    n = 1
    for d in input_shape:
        n *= d
    return Net(num_classes, n)
'''
TINY_SPEC = """epochs: 1
batch_size: 64
transform: {mean: 0.5, std: 0.5}
layers:
  - type: Flatten
  - type: Linear
    config: {out_features: num_classes}
"""


def tiny_manifest(data: Path, rows: int) -> Path:
    header, *lines = [line for line in (data / "train.tsv").read_text().splitlines() if line]
    out = data / f"tiny-{rows}.tsv"
    out.write_text("\n".join([header, *lines[:rows]]) + "\n")
    return out


def read_stamp(logs: Callable[[], Any]) -> float | None:
    """The time the spec printed at its first forward (the sandbox has no host files to write)."""
    found = re.search(r"STAMP ([0-9.]+)", json.dumps(logs()))
    return float(found.group(1)) if found else None


def finished(c: Client, model_id: int) -> responses.ModelDetail | None:
    shown = c.models.show(model_id)
    return shown if shown["status"] in TERMINAL else None


def ray_client(server: Server) -> Any:
    """Ray's job client for the server's head; Ray reads its auth settings when imported."""
    server.use_ray_env()
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(server.info["dashboard_url"])


def ray_finished(ray: Any, job: str) -> str | None:
    status = str(ray.get_job_status(job))
    return status if status in RAY_TERMINAL else None


def running_at(model: responses.ModelDetail) -> float | None:
    """When the model's last run reached Running."""
    found = [h["at"] for h in model["runs"][-1]["history"] if h["status"] == "Running"]
    return parse_at(found[0]) if found else None


def latency(
    server: Server, admin: Client, manifest: Path, tmp: Path, repeats: int, timeout_s: float
) -> tuple[list[float], list[float], list[float]]:
    """Seconds from submit to the first training forward (platform runs, bare Ray jobs), and
    from submit to Running (platform runs)."""
    c = tenant_client(admin, "latency", 1, "1GiB")
    ds = upload(c, manifest, "latency-data")
    platform: list[float] = []
    to_running: list[float] = []
    for i in range(repeats):
        t0 = time.time()
        model = c.models.train(f"latency-{i}", "probe.py", STAMP_SPEC, ds, epochs=1, batch_size=64)
        logs = partial(c.models.logs, model["id"])
        t1 = wait_for(partial(read_stamp, logs), timeout_s, f"platform run {i}'s first batch")
        platform.append(t1 - t0)
        shown = wait_for(partial(finished, c, model["id"]), timeout_s, f"model {model['id']}")
        if shown["status"] != "Completed":
            raise RuntimeError(f"latency model {model['id']} ended {shown['status']}: "
                               f"{shown.get('error')}")  # fmt: skip
        to_running.append((running_at(shown) or float("nan")) - t0)
        print(f"  platform run {i + 1}: {platform[-1]:.2f}s (Running after "
              f"{to_running[-1]:.2f}s)", flush=True)  # fmt: skip
    ray = ray_client(server)
    out = tmp / "ray-out"  # shared: the manifest is ingested by the first job, then cached
    bare: list[float] = []
    for i in range(repeats):
        spec = tmp / f"probe-{i}.py"
        spec.write_text(STAMP_SPEC)
        entry = (f"cd {ROOT} && {sys.executable} -m jobs.training --spec {spec} "
                 f"--manifest {manifest} -e 1 -z 64 --out {out}")  # fmt: skip
        t0 = time.time()
        job = ray.submit_job(entrypoint=entry)
        job_logs = partial(ray.get_job_logs, job)
        t1 = wait_for(partial(read_stamp, job_logs), timeout_s, f"ray job {job}'s first batch")
        bare.append(t1 - t0)
        status = wait_for(partial(ray_finished, ray, job), timeout_s, f"ray job {job}")
        if status != "SUCCEEDED":
            raise RuntimeError(f"ray job {job} ended {status}: {ray.get_job_logs(job)[-2000:]}")
        print(f"  ray job {i + 1}: {bare[-1]:.2f}s", flush=True)
    return platform, bare, to_running


def api_latency(server: Server, c: Client, requests: int) -> dict[str, list[float]]:
    """Seconds per `GET /api/v1/models` of the tenant's runs, one at a time on a kept
    connection: through the API's port (the front), through Serve's own proxy (the API as a
    plain Serve app has it), and `GET /health` through the front (HTTP with no store)."""
    import httpx

    headers = dict(c._http.headers)  # the tenant user's token and tenant
    paths = {"models via front": (server.api_url, "/models")}
    if server.serve_url:
        paths["models via Serve proxy"] = (server.serve_url + "/api/v1", "/models")
    paths["health via front"] = (server.api_url, "/health")
    found: dict[str, list[float]] = {}
    for label, (base, path) in paths.items():
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            for _ in range(20):  # warm: connections, caches
                http.get(path).raise_for_status()
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                http.get(path).raise_for_status()
                times.append(time.perf_counter() - started)
        found[label] = times
    return found


def admitted_at(model: responses.ModelDetail) -> float | None:
    """When the queue admitted the model's last run (its "Starting"; started_at is Running)."""
    starting = [h["at"] for h in model["runs"][-1]["history"] if h["status"] == "Starting"]
    return parse_at(starting[-1]) if starting else None


def order_violations(shown: Sequence[responses.ModelDetail], priority: dict[int, int]) -> list[str]:
    """Pairs admitted out of order: b waited (submitted before a's admission), ranks above a."""
    starts = {m["id"]: admitted for m in shown if (admitted := admitted_at(m)) is not None}
    created = {m["id"]: parse_at(m["created_at"]) for m in shown}
    found = []
    for a in starts:
        for b in starts:
            if starts[b] <= starts[a] or created[b] > starts[a] - ORDER_SLACK_S:
                continue
            if (-priority[b], b) < (-priority[a], a):
                found.append(f"model {a} (priority {priority[a]}) was admitted before model {b} "
                             f"(priority {priority[b]}), which was waiting")  # fmt: skip
    return found


def check_runs(shown: Sequence[responses.ModelDetail], n: int) -> list[str]:
    """Lost, failed or duplicated runs: every model Completed once, with exactly epoch 1."""
    problems = [] if len(shown) == n else [f"{len(shown)} models found, {n} submitted"]
    for m in shown:
        runs, epochs = m["runs"], [e["epoch"] for e in m["metrics"]]
        starts = sum(1 for r in runs for h in r["history"] if h["status"] == "Starting")
        if m["status"] != "Completed":
            problems.append(f"model {m['id']} ended {m['status']}: {m.get('error')}")
        if len(runs) != 1 or runs[0]["restarts"] != 0 or starts != 1 or epochs != [1]:
            problems.append(f"model {m['id']} ran more or less than once: {len(runs)} run(s), "
                            f"restarts {runs[-1]['restarts']}, {starts} start(s), "
                            f"epochs {epochs}")  # fmt: skip
    return problems


def queue_throughput(
    admin: Client, manifest: Path, n: int, timeout_s: float
) -> tuple[float, list[str], Client]:
    """N tiny runs at once into a one-slot tenant: runs per second, what went wrong, and the
    tenant's client."""
    c = tenant_client(admin, "queue", 1, "1GiB")
    ds = upload(c, manifest, "queue-data")
    priority: dict[int, int] = {}
    t0 = time.time()
    for i in range(n):
        p = 5 if i % 10 == 9 else 0
        m = c.models.train(f"q-{i:03d}", "tiny.yaml", TINY_SPEC, ds, epochs=1, priority=p)
        priority[int(m["id"])] = p
    print(f"  submitted {n} runs in {time.time() - t0:.1f}s", flush=True)

    def all_done() -> list[responses.Model] | None:
        listed = [m for m in c.models.list() if m["id"] in priority]
        done = [m for m in listed if m["status"] in TERMINAL]
        return listed if len(done) == n else None

    try:
        wait_for(all_done, timeout_s, f"{n} runs to finish", every=1.0)
    except RuntimeError as exc:
        states = [m["status"] for m in c.models.list() if m["id"] in priority]
        counts = {s: states.count(s) for s in sorted(set(states))}
        return 0.0, [f"{exc}: {counts}"], c
    shown = [c.models.show(i) for i in sorted(priority)]
    problems = check_runs(shown, n) + order_violations(shown, priority)
    last = max(parse_at(m["ended_at"]) for m in shown if m["ended_at"] is not None)
    return n / (last - t0), problems, c


def ray_throughput(server: Server, m: int, timeout_s: float) -> float:
    """M trivial jobs submitted straight to Ray Jobs at once: jobs per second."""
    ray = ray_client(server)
    t0 = time.time()
    ids = {ray.submit_job(entrypoint=f"{sys.executable} -c pass") for _ in range(m)}

    def all_done() -> list[Any] | None:
        jobs = [j for j in ray.list_jobs() if j.submission_id in ids]
        return jobs if sum(str(j.status) in RAY_TERMINAL for j in jobs) == m else None

    jobs = wait_for(all_done, timeout_s, f"{m} Ray jobs to finish", every=0.5)
    failed = [j.submission_id for j in jobs if str(j.status) != "SUCCEEDED"]
    if failed:
        raise RuntimeError(f"{len(failed)} trivial Ray jobs did not succeed: {failed[:5]}")
    last = max(j.end_time or 0 for j in jobs) / 1000.0
    return m / (last - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="tiny runs queued at once")
    parser.add_argument("--api-requests", type=int, default=300, help="GET /models timed")
    parser.add_argument("--ray-jobs", type=int, default=50, help="trivial Ray jobs at once")
    parser.add_argument("--repeats", type=int, default=5, help="latency samples of each kind")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for each wait")
    parser.add_argument("--keep", action="store_true", help="keep NCLOUD_HOME (logs) after")
    args = parser.parse_args()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as name:
        tmp = Path(name)
        make_digits(tmp / "digits", size=8, holdout=0)
        manifest = tiny_manifest(tmp / "digits", 64)
        with private_server(keep=args.keep) as server:
            admin = server.admin()
            print(f"\n1) submit -> first training batch, {args.repeats} of each", flush=True)
            ours, bare, to_running = latency(
                server, admin, manifest, tmp, args.repeats, args.timeout
            )
            print(f"\n2) {args.runs} tiny runs at once into a tenant with one slot", flush=True)
            rate, problems, tenant = queue_throughput(admin, manifest, args.runs, args.timeout)
            print(f"\n3) GET /api/v1/models of {args.runs} runs, {args.api_requests} times",
                  flush=True)  # fmt: skip
            api = api_latency(server, tenant, args.api_requests)
            print(f"\n4) {args.ray_jobs} trivial jobs straight to Ray Jobs", flush=True)
            ray_rate = ray_throughput(server, args.ray_jobs, args.timeout)
    print(f"\nserver start to a ready API: {server.start_s:.1f}s (target < 10 s): "
          f"{verdict(server.start_s < 10)}")  # fmt: skip
    print("\nlatency, submit -> first training batch (s)")
    print(f"  {'':<10} {'first':>7} {'median':>7}  all")
    for label, xs in (("platform", ours), ("ray job", bare)):
        print(f"  {label:<10} {xs[0]:>7.2f} {median(xs):>7.2f}  "
              + " ".join(f"{x:.2f}" for x in xs))  # fmt: skip
    ratio = median(ours) / median(bare)
    print(f"  ratio platform/ray = {ratio:.2f} (target <= 1.00): {verdict(ratio <= 1.0)}")
    print(f"  the first run after the start reached Running {to_running[0]:.2f}s after its "
          f"submit (target < 1 s): {verdict(to_running[0] < 1.0)}; the others "
          + " ".join(f"{x:.2f}" for x in to_running[1:]))  # fmt: skip
    print(f"\nGET /api/v1/models with {args.runs} runs, one at a time (ms)")
    for label, times in api.items():
        ms = sorted(t * 1e3 for t in times)
        print(f"  {label:<24} p50 {median(ms):6.2f}  p99 {ms[int(len(ms) * 0.99) - 1]:6.2f}")
    p50 = median(api["models via front"]) * 1e3
    print(f"  p50 through the front = {p50:.2f} ms (target < 10 ms): {verdict(p50 < 10)}")
    print("\nthroughput")
    print(f"  platform queue: {rate:.2f} runs/s ({args.runs} tiny training runs)")
    print(f"  ray jobs:       {ray_rate:.2f} jobs/s ({args.ray_jobs} x `python -c pass`)")
    speedup = rate / ray_rate if ray_rate else 0.0
    print(f"  ratio queue/ray = {speedup:.2f}x (target >= 50x): {verdict(speedup >= 50)}")
    if problems:
        print(f"\nFAILED: {len(problems)} problem(s) with the queued runs:", file=sys.stderr)
        for p in problems[:20]:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(1)
    print(f"\nall {args.runs} queued runs completed exactly once, in priority/FIFO order")


if __name__ == "__main__":
    main()
