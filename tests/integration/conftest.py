"""One local ncloud server (Ray head + control plane) per test run, started with the real CLI.

Everything binds to 127.0.0.1 on free ports, lives under a temporary NCLOUD_HOME, and is
stopped at the end by `ncloud server stop` (which ends exactly the processes it started).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.control.local import free_ports
from examples.digits import make_digits
from ncloud.client import Client
from ncloud.errors import NcloudError
from tests.s3 import CREDENTIALS, FlakyProxy, MotoServer

# Logical CPUs of the test cluster: one more than the cores, so a tenant can hold two bundles
# for training while other tests make tenants of their own.
CPUS = 3
# Declared to Ray whether or not the machine has one: Ray schedules and assigns GPU ids by
# count, so GPU placement is tested on CPU machines too (torch then finds no CUDA).
GPUS = 1


@dataclass
class S3:
    """The session's real S3 endpoint: moto, and the proxy the server talks to it through."""

    moto: MotoServer
    proxy: FlakyProxy

    def fs(self) -> Any:
        """An s3fs filesystem straight to moto (not through the proxy), for test setup."""
        import s3fs

        return s3fs.S3FileSystem(
            key="testing", secret="testing", client_kwargs={"endpoint_url": self.moto.url}
        )


@dataclass
class Server:
    home: Path
    env: dict[str, str]
    api_url: str
    dashboard_url: str
    admin_token: str
    ports: dict[str, int]
    s3: S3
    clients: dict[tuple[str, str | None], Client] = field(default_factory=dict)

    def cli(
        self,
        *args: str,
        token: str | None = None,
        tenant: str | None = None,
        check: bool = True,
        timeout: float = 300,
        own_ray_auth: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """own_ray_auth: without this process's Ray token settings, as a user runs `server`
        commands (they must find the cluster's token under NCLOUD_HOME by themselves)."""
        env = dict(self.env)
        if own_ray_auth:
            env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH_")}
        env["NCLOUD_TOKEN"] = token or self.admin_token
        if tenant:
            env["NCLOUD_TENANT"] = tenant
        proc = subprocess.run(
            [sys.executable, "-m", "ncloud.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ncloud {' '.join(args)} -> {proc.returncode}\n{proc.stderr}")
        return proc

    def client(self, token: str | None = None, tenant: str | None = None) -> Client:
        """One client per (token, tenant) for the session, closed by stop()."""
        key = (token or self.admin_token, tenant)
        if key not in self.clients:
            self.clients[key] = Client(self.api_url, token=key[0], tenant=tenant)
        return self.clients[key]

    def start(self) -> dict[str, Any]:
        p = self.ports
        out = self.cli(
            "server",
            "start",
            "--cpus",
            str(CPUS),
            "--gpus",
            str(GPUS),
            "--port",
            str(p["api"]),
            "--ray-port",
            str(p["ray"]),
            "--dashboard-port",
            str(p["dashboard"]),
            "-o",
            "json",
            timeout=400,
            own_ray_auth=True,
        )
        return json.loads(out.stdout)

    def stop(self, hard: bool = False) -> dict[str, Any]:
        """`ncloud server stop` (--hard: without suspending runs first); what it printed."""
        for c in self.clients.values():
            c.close()
        self.clients.clear()
        flags = ["--hard"] if hard else []
        state = self.home / "server.json"
        # A local head's token is under NCLOUD_HOME; an attached cluster's is the caller's.
        local = state.exists() and json.loads(state.read_text()).get("pid") is not None
        out = self.cli(
            "server", "stop", *flags, "-o", "json", check=False, timeout=180, own_ray_auth=local
        )
        return json.loads(out.stdout) if out.returncode == 0 else {}


def upload_dataset(server: Server, manifest: Path, name: str, token: str, tenant: str) -> int:
    """`ncloud dataset upload` as a user would, waiting for Ready; returns the dataset id."""
    out = server.cli(
        "dataset",
        "upload",
        str(manifest),
        "--name",
        name,
        "-o",
        "json",
        token=token,
        tenant=tenant,
        timeout=600,
    )
    return int(json.loads(out.stdout)["id"])


def actor_pid(server: Server, class_name: str) -> int:
    """The pid of the one live actor of `class_name` (Controller, ProxyActor, ...)."""
    from ray.util.state import list_actors

    alive = list_actors(
        address=server.dashboard_url,
        filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
    )
    if not alive or alive[0].pid is None:
        raise AssertionError(f"no live {class_name} actor: {alive}")
    return int(alive[0].pid)


def kill_controller(server: Server) -> None:
    """SIGKILL the control plane's controller actor (Ray starts it again)."""
    import signal

    os.kill(actor_pid(server, "Controller"), signal.SIGKILL)


def wait_for(condition: Callable[[], Any], timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (httpx.HTTPError, OSError, AssertionError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    moto = MotoServer()
    proxy = FlakyProxy(moto.port)
    try:
        yield S3(moto, proxy)
    finally:
        proxy.stop()
        moto.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, s3: S3) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("ncloud-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCLOUD_")}
    env.update(
        {
            "NCLOUD_HOME": str(home),
            "NCLOUD_RC": str(home / "ncloudrc"),
            "PYTHONUNBUFFERED": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "NCLOUD_S3_ENDPOINT_URL": s3.proxy.url,
            # Every test calls from 127.0.0.1: its own 401 checks stay far under this; the
            # throttling tests flood from other loopback addresses (127.0.0.0/8).
            "NCLOUD_AUTH_FAILURES_PER_MINUTE": "60",
            # a spec that spins is refused sooner (a real check uses 2-3 s of CPU)
            "NCLOUD_CHECK_CPU_SECONDS": "10",
            # absent unless a test writes it: then the cluster "may grow" as it says
            "NCLOUD_AUTOSCALER_CONFIG": str(home / "autoscaler.yaml"),
            **CREDENTIALS,
        }
    )
    ports = dict(zip(("api", "ray", "dashboard"), free_ports(3, set()), strict=True))
    srv = Server(home, env, f"http://127.0.0.1:{ports['api']}", "", "", ports, s3)
    env["NCLOUD_HOST"] = srv.api_url
    # The cluster's Ray token is the session's (tests/conftest.py): this process's Ray
    # client read it before any test ran, for the state API calls the tests make.
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(os.environ["RAY_AUTH_TOKEN_PATH"], home / "ray-auth-token")
    os.chmod(home / "ray-auth-token", 0o600)
    started = srv.start()
    srv.admin_token = started["admin_token"]
    srv.dashboard_url = started["dashboard_url"]
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def tenant(server: Server) -> Iterator[Callable[..., dict[str, Any]]]:
    """Make tenants for one test and remove them afterwards."""
    made: list[str] = []

    def make(name: str, cpus: int = 1, gpus: int = 0, memory: str = "256MiB") -> dict[str, Any]:
        found = server.client().tenants.add(name, cpus, gpus, memory)
        made.append(name)
        return found

    yield make
    for name in made:
        with contextlib.suppress(NcloudError):  # already removed by the test
            server.client().tenants.remove(name, force=True)


@pytest.fixture(scope="module")
def lab(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """For the training tests, one per module: a tenant with the whole cluster (2 one-CPU
    bundles, 1 GiB each) and the digits uploaded."""
    data = tmp_path_factory.mktemp("train-digits")
    make_digits(data, size=16)
    admin = server.client()
    admin.tenants.add("lab", 2, 0, "2GiB")
    user = admin.users.add("tess@example.com", ["lab"])
    ids = {}
    for split in ("train", "valid"):
        ids[split] = upload_dataset(server, data / f"{split}.tsv", split, user["token"], "lab")
    try:
        yield {"token": user["token"], "tenant": "lab", "data": data, **ids}
    finally:
        client = server.client(token=user["token"], tenant="lab")
        for m in client.models.list("training"):
            client.models.stop(m["id"])
        admin.users.remove("tess@example.com")
        admin.tenants.remove("lab", force=True)
