"""The local cluster's lifecycle: a Ray head on loopback, the controller and the API on it.

`start` runs `ray start --head --block` as a child in its own process group and records
its PID in NCLOUD_HOME/server.json, so `stop` ends exactly what `start` started (never a
machine-wide `ray stop`). With `address`, it attaches to an existing cluster instead and
`stop` removes only the control plane.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import httpx

from cluster.control import front, lease, processes, schema, startup
from cluster.control.attach import check_reachable, connect
from cluster.core import accounts, shutdown, storage
from cluster.core.names import CONTROLLER, NAMESPACE, ON_HEAD, control_plane_env
from ncloud.errors import Conflict, NcloudError, ServerError
from ncloud.protocol import API_PREFIX
from ncloud.settings import settings

log = logging.getLogger("ncloud.server")
START_TIMEOUT_S = 180.0
# `server stop`: how long a run has to checkpoint before it is ended (as `model stop`'s), and
# how long the stop waits for the controller to say they all did (the stop margin after).
SUSPEND_GRACE_S = 30.0
SUSPEND_TIMEOUT_S = SUSPEND_GRACE_S + 60.0
# Two of Ray Serve's own throughput settings (those RAY_SERVE_THROUGHPUT_OPTIMIZED sets, less
# direct ingress): the proxy routes on its own event loop instead of a second one, and access
# logs are written in batches. A 1,000-connection burst's p99 went from 2.79/3.84/4.05 s to
# 2.44/2.32/1.62 s (bench/burst.py, interleaved runs). The environment may override them.
SERVE_TUNING = {
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
}


@dataclass
class ServerState:
    api_url: str
    ray_address: str
    dashboard_url: str
    pid: int | None  # the `ray start --block` process; None when attached to a cluster
    started_at: float
    home: str
    log: str
    serve_url: str = ""  # Serve's own proxy, when the front (cluster/control/front.py) has the port


def _state_path() -> Path:
    return settings().home / "server.json"


def read_state() -> ServerState | None:
    try:
        return ServerState(**json.loads(_state_path().read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int, taken: set[int]) -> list[int]:
    """n distinct free ports, none of them `taken` (ports already named for other parts, not
    bound yet: two picks of the kernel's may return the same one)."""
    found: list[int] = []
    while len(found) < n:
        port = free_port()
        if port not in taken and port not in found:
            found.append(port)
    return found


def ray_auth_env() -> dict[str, str]:
    """Ray token auth for the local cluster, with a token of its own under NCLOUD_HOME.

    Ray's gRPC ports cannot all be held to loopback, so every client of this cluster
    (our drivers, `ray job submit`, `ray list ...`) must present this token.
    """
    path = settings().home / "ray-auth-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def _write_state(
    api_url: str,
    address: str,
    dashboard_port: int,
    pid: int | None,
    log_path: Path,
    serve_port: int | None = None,
) -> ServerState:
    state = ServerState(
        api_url=api_url,
        ray_address=address,
        dashboard_url=f"http://127.0.0.1:{dashboard_port}" if pid else "",
        pid=pid,
        started_at=time.time(),
        home=str(settings().home),
        log=str(log_path),
        serve_url=f"http://127.0.0.1:{serve_port}" if serve_port else "",
    )
    _state_path().write_text(json.dumps(asdict(state), indent=2))
    return state


def _start_head(
    cpus: int | None,
    gpus: int | None,
    ray_port: int,
    dashboard_port: int,
    log_path: Path,
    serve_port: int | None,
) -> int:
    """`serve_port`: where Serve's proxy goes when the front has the API's port (None: no
    front, so no direct ingress either)."""
    ray_bin = Path(sys.executable).parent / "ray"
    temp_dir = (
        Path("/tmp") / f"ncloud-{hashlib.sha1(str(settings().home).encode()).hexdigest()[:8]}"
    )
    client, agent, agent_grpc, runtime_env, metrics = free_ports(5, {ray_port, dashboard_port})
    args = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--port={ray_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--temp-dir={temp_dir}",
    ]
    if cpus is not None:
        args.append(f"--num-cpus={cpus}")
    if gpus is not None:
        args.append(f"--num-gpus={gpus}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The log is appended to across starts: only what this start writes says it is up.
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={
                **SERVE_TUNING,
                **(front.serve_env() if serve_port is not None else {}),
                **os.environ,
                **control_plane_env(),
                "NCLOUD_CACHE_DIR": str(settings().cache_dir),
                # The metrics agent's Prometheus port listens on every interface without
                # authentication and names tenants' actors: off on the local cluster.
                "RAY_enable_metrics_collection": "0",
            },
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ServerError(
                f"the Ray head exited with {proc.returncode}; log {log_path}:\n{tail}"
            )
        with open(log_path, "rb") as log:
            log.seek(offset)
            if b"This command will now block" in log.read():
                return proc.pid
        time.sleep(0.1)
    processes.kill_session(proc.pid)
    raise ServerError(f"the Ray head did not start within {START_TIMEOUT_S:g}s; see {log_path}")


def deploy_control_plane(
    ray_address: str, api_host: str, api_port: int, serve_port: int | None = None
) -> None:
    """Connect as a short-lived driver, start the controller and the API, disconnect.

    `serve_port`: the local cluster's HAProxy front (cluster/control/front.py) takes the
    API's port, started by the controller, and Serve's proxy moves to this loopback port."""
    import ray
    from ray import serve

    from cluster.control.controller import Controller
    from serve.app import APP_NAME, ROUTE_PREFIX, api_application

    env = control_plane_env()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    connect(
        ray_address,
        namespace=NAMESPACE,
        logging_level=logging.WARNING,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    serve_host, serve_at, front_cfg = api_host, api_port, None
    if serve_port is not None:
        serve_host, serve_at = "127.0.0.1", serve_port
        folder = str(settings().home / "front")
        front_cfg = asdict(front.FrontConfig(api_host, api_port, serve_port, folder))
    try:
        actor_class: Any = ray.remote(Controller)
        actor = actor_class.options(
            name=CONTROLLER,
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=-1,
            max_task_retries=-1,
            max_concurrency=8,
            num_cpus=0,
            resources=ON_HEAD,
            get_if_exists=True,
        ).remote(env["NCLOUD_DB_URL"], front_cfg)
        # Serve and the API start while the controller does (it waits for the API before it
        # touches Serve); the start waits for the API alone: the dashboard and the answer
        # for models with no deployment come up a second or two later, in the background.
        from serve.routes.deployments import fallback_application
        from serve.ui.app import APP_NAME as UI_NAME
        from serve.ui.app import ROUTE_PREFIX as UI_PREFIX
        from serve.ui.app import ui_application

        serve.start(http_options={"host": serve_host, "port": serve_at})
        serve.run(api_application(env), name=APP_NAME, route_prefix=ROUTE_PREFIX)
        serve.run_many(
            [
                serve.RunTarget(
                    fallback_application(env), name="ncloud-models", route_prefix="/models"
                ),
                serve.RunTarget(ui_application(env), name=UI_NAME, route_prefix=UI_PREFIX),
            ],
            wait_for_applications_running=False,
        )
        ray.get(actor.ping.remote(), timeout=START_TIMEOUT_S)
    finally:
        ray.shutdown()


def remove_control_plane(ray_address: str) -> None:
    import ray
    from ray import serve

    from serve.app import APP_NAME
    from serve.ui.app import APP_NAME as UI_NAME

    ray.init(
        address=ray_address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False
    )
    try:
        serve.delete(APP_NAME)
        serve.delete(UI_NAME)
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(CONTROLLER, namespace=NAMESPACE), no_restart=True)
    finally:
        ray.shutdown()


def start(
    cpus: int | None = None,
    gpus: int | None = None,
    api_port: int = 8000,
    ray_port: int = 6380,
    dashboard_port: int = 8265,
    address: str | None = None,
    api_host: str = "127.0.0.1",
) -> dict[str, Any]:
    """Start (or attach) and deploy; returns the state plus the first admin token, if new.
    One start per NCLOUD_HOME at a time (cluster/control/startup.py)."""
    with startup.start_lock(settings().home):
        return _start(cpus, gpus, api_port, ray_port, dashboard_port, address, api_host)


def _start(
    cpus: int | None,
    gpus: int | None,
    api_port: int,
    ray_port: int,
    dashboard_port: int,
    address: str | None,
    api_host: str,
) -> dict[str, Any]:
    state = read_state()
    if (
        state is not None
        and (processes.alive(state.pid) or state.pid is None)
        and healthy(state.api_url)
    ):
        raise Conflict(f"ncloud is already running at {state.api_url} (ncloud server status)")
    if state is not None and state.pid is not None and processes.alive(state.pid):
        # A head left without a control plane (say, after the API was killed): start clean.
        processes.kill_session(state.pid)
    if address is None:  # a head killed whole (kill -9) leaves its front on the API's port
        front.stop_left(settings().home / "front")
    s = settings()
    shutdown.end(s.home)  # a stop that died half-way left its mark: this controller records all
    if address is None:
        # Sandboxes of a head that is gone left their folders: nothing on this node uses them.
        shutil.rmtree(s.sandbox_dir, ignore_errors=True)
    # The sandbox's self-test (a second and a half) runs while the head starts; the API is
    # not deployed until it has passed, so no tenant code runs without a sandbox.
    checked = None if s.single_tenant else ThreadPoolExecutor(1).submit(_check_sandbox)
    if address is not None:
        check_reachable(address)
    else:
        ports = {"--port": api_port, "--ray-port": ray_port, "--dashboard-port": dashboard_port}
        startup.check_ports(ports, "127.0.0.1" if api_host in ("0.0.0.0", "::") else api_host)
    storage.check_writable(s.storage)  # a missing bucket says so now, not at the first upload
    owner = lease.owner_id(s.home)
    store = schema.open_store(s.db_url)  # created or upgraded before anything starts
    try:
        lease.claim(store, owner)  # one control plane per store
    finally:
        store.dispose()
    log_path = s.home / "logs" / "server.log"
    pid, serve_port = None, None
    loopback = "127.0.0.1" if api_host in ("0.0.0.0", "::") else api_host
    api_url = f"http://{loopback}:{api_port}{API_PREFIX}"
    try:
        if address is None:
            os.environ.update(ray_auth_env())
            # The driver's imports (Ray, Serve, the applications: a second) while the head
            # starts.
            imported = ThreadPoolExecutor(1).submit(_import_control_plane)
            if front.binary() is not None:  # the local cluster's front takes the API's port
                serve_port = free_ports(1, {api_port, ray_port, dashboard_port})[0]
            pid = _start_head(cpus, gpus, ray_port, dashboard_port, log_path, serve_port)
            address = f"127.0.0.1:{ray_port}"
            # Said at once: a start killed from here on leaves a head that the next start
            # finds (alive, not answering) and ends before it starts its own.
            _write_state(api_url, address, dashboard_port, pid, log_path)
            imported.result()
        if checked is not None:
            checked.result()  # fail closed: no sandbox, no tenant code
        deploy_control_plane(address, api_host, api_port, serve_port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not healthy(api_url):
            if time.monotonic() > deadline:
                raise ServerError(f"the API did not answer at {api_url}; see {log_path}")
            time.sleep(0.1)
    except BaseException:
        if pid is not None:
            processes.kill_session(pid)
            _state_path().unlink(missing_ok=True)
        with contextlib.suppress(NcloudError):  # the start's own error is the one to say
            _release_lease(owner)
        raise
    state = _write_state(api_url, address, dashboard_port, pid, log_path, serve_port)
    # Only now that the server answers: a start that fails leaves no admin whose one-time
    # token nobody saw (and `ncloud server admin-token --reset` mints another).
    store = schema.open_store(s.db_url)
    try:
        admin_token = accounts.ensure_admin(store)
    finally:
        store.dispose()
    return {**asdict(state), "admin_token": admin_token}


def _check_sandbox() -> None:
    from jobs.sandbox.launch import self_test
    from jobs.sandbox.policy import SandboxUnavailable

    try:
        self_test()
    except SandboxUnavailable as exc:
        raise SandboxUnavailable(
            f"{exc.message}. Tenant code runs only in a sandbox, so the server does not "
            "start; on a one-person machine, --single-tenant runs it unsandboxed"
        ) from exc


def _import_control_plane() -> None:
    import importlib

    for name in ("ray.serve", "cluster.control.controller", "serve.app", "serve.ui.app"):
        importlib.import_module(name)


def reset_admin_token() -> dict[str, Any]:
    """A new token for the first admin, minted from the store itself (no server needed):
    for when the one printed at the first start is lost."""
    store = schema.open_store(settings().db_url)
    try:
        email, token = accounts.new_admin_token(store)
    finally:
        store.dispose()
    return {"email": email, "admin_token": token}


def stop(hard: bool = False) -> dict[str, Any]:
    """Stop what `start` started. Runs in progress are checkpointed and Suspended first, to
    resume at the next start (hard: not; they resume from their last periodic checkpoint)."""
    state = read_state()
    if state is None:
        raise Conflict("ncloud is not running (no server.json under NCLOUD_HOME)")
    suspended = None if hard else _suspend_runs(state)
    if state.pid is None:
        try:
            remove_control_plane(state.ray_address)
        except (NcloudError, ConnectionError, RuntimeError) as exc:
            raise ServerError(f"could not reach the cluster at {state.ray_address}: {exc}") from exc
    else:
        shutdown.begin(settings().home)
        processes.kill_session(state.pid)
        shutdown.end(settings().home)
    _release_lease(lease.owner_id(settings().home))
    _state_path().unlink(missing_ok=True)
    found: dict[str, Any] = {"stopped": True, "api_url": state.api_url, "pid": state.pid}
    if suspended is not None:
        found["suspended_models"] = suspended["suspended"]
        if suspended["left"]:
            found["models_not_suspended"] = suspended["left"]  # resume from a periodic checkpoint
    return found


def _suspend_runs(state: ServerState) -> dict[str, list[int]] | None:
    """Ask the controller to checkpoint and suspend every run in progress; None when it
    cannot be asked (a dead head): the runs then resume from their last periodic checkpoint."""
    if state.pid is not None:  # before Ray is imported: it reads its auth settings once
        os.environ.update(ray_auth_env())
    import ray

    try:
        connect(
            state.ray_address, namespace=NAMESPACE, logging_level=logging.WARNING,
            log_to_driver=False,
        )  # fmt: skip
        try:
            controller = ray.get_actor(CONTROLLER, namespace=NAMESPACE)
            found: Any = ray.get(
                controller.suspend_runs.remote(SUSPEND_GRACE_S), timeout=SUSPEND_TIMEOUT_S
            )
            return cast(dict[str, list[int]], found)
        finally:
            ray.shutdown()
    except Exception as exc:  # stopping must not fail for this: say it, and stop
        log.warning("could not suspend the runs in progress before stopping: %s", exc)
        return None


def _release_lease(owner: str) -> None:
    store = schema.open_store(settings().db_url)
    try:
        lease.release(store, owner)
    finally:
        store.dispose()


def status() -> dict[str, Any]:
    state = read_state()
    if state is None:
        return {"running": False, "home": str(settings().home)}
    up = healthy(state.api_url)
    head = state.pid is None or processes.alive(state.pid)
    found = {
        **asdict(state),
        "running": up and head,
        "api_healthy": up,
        "head_alive": head,
        "uptime_s": round(time.time() - state.started_at),
    }
    if state.pid is not None:
        found["ray_env"] = {**ray_auth_env(), "RAY_ADDRESS": state.dashboard_url}
    return found
