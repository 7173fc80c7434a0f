"""Shared set-up for the platform benchmarks: a private server, a tenant's client, datasets."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ncloud.client import Client

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio_interval(ratios: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Geometric mean of paired per-round ratios and its t confidence interval.

    Rounds of the same load on a shared 2-core machine swing by +-10%; the interval says
    whether a pooled ratio near 1.0 is a difference or noise. (nan, nan, nan) for < 2 rounds.
    """
    if len(ratios) < 2 or min(ratios) <= 0:
        return float("nan"), float("nan"), float("nan")
    from scipy.stats import t  # scikit-learn's dependency, already installed

    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    half = float(t.ppf((1 + level) / 2, len(logs) - 1)) * statistics.stdev(logs) / len(logs) ** 0.5
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def parse_at(stamp: str) -> float:
    """An ISO timestamp from the API (naive means UTC) as epoch seconds."""
    at = dt.datetime.fromisoformat(stamp)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.timestamp()


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, every: float = 0.2) -> T:
    """Poll check() until it returns something other than None; RuntimeError at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(every)


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


class Server:
    """A private ncloud server (own NCLOUD_HOME, free ports), started by the CLI."""

    def __init__(self, home: Path, cpus: int = 2) -> None:
        self.home, self.cpus = home, cpus
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NCLOUD_")}
        self.env.update({"NCLOUD_HOME": str(home), "NCLOUD_RC": str(home / "rc")})
        self.info: dict[str, Any] = {}
        self.ray_env: dict[str, str] = {}
        self.start_s = float("nan")  # `ncloud server start`, to a ready API

    def cli(self, *args: str, timeout_s: float = 300) -> Any:
        proc = subprocess.run(
            [sys.executable, "-m", "ncloud.cli.main", *args, "-o", "json"],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"`ncloud {' '.join(args)}` exited {proc.returncode}: "
                               f"{proc.stderr.strip()[-2000:]}")  # fmt: skip
        return json.loads(proc.stdout)

    def start(self) -> None:
        ports = [str(free_port()) for _ in range(3)]
        started = time.perf_counter()
        self.info = self.cli(
            "server", "start", "--cpus", str(self.cpus), "--port", ports[0],
            "--ray-port", ports[1], "--dashboard-port", ports[2], timeout_s=600,
        )  # fmt: skip
        self.start_s = time.perf_counter() - started
        status = self.cli("server", "status")
        self.ray_env = {k: str(v) for k, v in (status.get("ray_env") or {}).items()}
        if "ray" in sys.modules:
            print("warning: ray was imported before its auth settings were set", file=sys.stderr)

    def stop(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "ncloud.cli.main", "server", "stop"],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if proc.returncode != 0:
            print(f"warning: server stop exited {proc.returncode}: {proc.stderr.strip()}",
                  file=sys.stderr)  # fmt: skip

    @property
    def api_url(self) -> str:
        return str(self.info["api_url"])

    @property
    def serve_url(self) -> str:
        """Serve's own proxy ("" when it has the API's port itself: no front)."""
        return str(self.info.get("serve_url") or "")

    @property
    def log_path(self) -> Path:
        return self.home / "logs" / "server.log"

    def admin(self) -> Client:
        token = self.info.get("admin_token") or (self.home / "admin-token").read_text().strip()
        return Client(self.api_url, token=str(token))

    def use_ray_env(self) -> None:
        """Point Ray's job client (in this process) at this server's Ray head."""
        if not self.ray_env:
            raise RuntimeError("`ncloud server status` gave no ray_env for this server")
        os.environ.update(self.ray_env)


@contextmanager
def private_server(cpus: int = 2, keep: bool = False) -> Iterator[Server]:
    """A started server in a temporary NCLOUD_HOME; stopped (and the home removed) after."""
    home = Path(tempfile.mkdtemp(prefix="ncloud-bench-"))
    server = Server(home, cpus)
    print(f"starting a private server (NCLOUD_HOME={home}) ...", flush=True)
    started = time.perf_counter()
    try:
        server.start()
        print(f"server up in {time.perf_counter() - started:.1f}s at {server.api_url}", flush=True)
        yield server
    finally:
        server.stop()
        if keep:
            print(f"kept {home} (server log: {server.log_path})")
        else:
            subprocess.run(["rm", "-rf", str(home)], check=False)


def tenant_client(admin: Client, tenant: str, cpus: int, memory: str = "2GiB") -> Client:
    """A new tenant of `cpus` CPUs and a user in it; that user's client."""
    admin.tenants.add(tenant, cpus, 0, memory)
    user = admin.users.add(f"{tenant}@example.com", [tenant])
    return Client(admin.base_url, token=str(user["token"]), tenant=tenant)


def remove_tenant(admin: Client, tenant: str) -> None:
    admin.users.remove(f"{tenant}@example.com")
    admin.tenants.remove(tenant, force=True)


def upload(c: Client, manifest: Path, name: str, timeout_s: float = 300) -> int:
    """Upload a manifest and its files, ingest it and wait until Ready; the dataset id."""
    created = c.datasets.create(name, manifest.read_bytes(), manifest.name)
    ds_id = int(created["id"])
    for rel in created.get("needed", []):
        data = (manifest.parent / rel).read_bytes()
        c.datasets.put_file(ds_id, rel, iter([data]), len(data))
    c.datasets.ingest(ds_id)

    def ready() -> int | None:
        status = c.datasets.show(ds_id)["status"]
        if status == "Failed":
            raise RuntimeError(f"dataset {name} failed to ingest: {c.datasets.show(ds_id)}")
        return ds_id if status == "Ready" else None

    return wait_for(ready, timeout_s, f"dataset {name} to be Ready", every=0.5)


def replicate(manifest: Path, copies: int, out: Path) -> Path:
    """A manifest listing every row of `manifest` `copies` times (same files), beside it."""
    header, *rows = [line for line in manifest.read_text().splitlines() if line]
    out.write_text("\n".join([header, *(rows * copies)]) + "\n")
    return out
