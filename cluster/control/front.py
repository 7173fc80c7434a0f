"""The local cluster's front door: HAProxy on the API's port, straight to Serve's replicas.

With Serve's direct ingress on, every ingress replica (the API, the dashboard, each deployed
model) answers HTTP on a port of its own on loopback. The front routes each request to the
replicas of the application whose route prefix matches, longest first, and keeps Serve's own
proxy (moved to an inner port) as the backup of every route and the default for the rest.
Serve's proxy cost about three quarters of a prediction's time (bench/serve.py); HAProxy
costs none that shows, and a kill of Serve's proxy no longer takes the API down.

A thread of the controller keeps the front in step: every POLL_S it reads the replicas'
ports from Serve's controller, rewrites the config when they changed and reloads HAProxy
(master-worker mode: SIGUSR2, connections in flight finish on the old workers), and starts
HAProxy again when it is gone. Errors HAProxy answers itself are JSON `{code, message}`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.control import processes

log = logging.getLogger("ncloud.front")
POLL_S = 0.5
# A draining replica answers /-/routes 503 before it stops; two checks a second see it.
CHECK_INTER_MS = 500
# Serve holds a removed replica open this long so the front can stop sending it requests.
DRAINING_S = 2
# A deployed model's replica takes this many requests at a time from the front; the rest
# wait in HAProxy (C, no Python per connection) and are answered 503 with Retry-After past
# QUEUE_S. A 1,000-connection burst let straight into the replica kept its event loop busy
# accepting connections: p99 2.3 s, of which the replica's own share was 1.0 s.
MODEL_MAXCONN = 64
QUEUE_S = 1
MODEL_PREFIX = "/models/"  # a deployment's routes; not /models itself (no deployment)
# A model's request is retried on another replica when the one it went to refused the
# connection or closed it without an answer (killed mid-request): a prediction may be asked
# twice. HAProxy holds its body for that (up to BUFFER bytes; a larger one is not retried).
MODEL_RETRY_ON = "conn-failure empty-response"
BUFFER = 65536
# What HAProxy answers itself, as (status it sends, code, message). A replica gone mid-
# request (HAProxy's 502) is said as a 503 with Retry-After, as the replicas' own refusals:
# the client's move is the same, to retry in a second.
ERRORS = {
    502: (503, "unavailable", "the replica behind this route went away: retry in a second"),
    503: (503, "unavailable", "no replica can take this request now: retry in a second"),
    504: (504, "unavailable", "the service behind this route took too long to answer"),
}


@dataclass(frozen=True)
class Route:
    prefix: str  # Serve's route prefix, e.g. /models/3
    ports: tuple[int, ...]  # the replicas' direct-ingress HTTP ports on loopback


@dataclass(frozen=True)
class FrontConfig:
    host: str  # where the API listens (the front binds it)
    port: int
    serve_port: int  # Serve's own proxy, on loopback
    folder: str  # the config, its error pages and the master's PID file


def binary() -> str | None:
    """HAProxy's path, or None when the machine has none (Serve's proxy takes the port)."""
    if os.environ.get("NCLOUD_FRONT", "haproxy") != "haproxy":
        return None
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None,
    )


def serve_env() -> dict[str, str]:
    """What the head's Serve needs for the front: replicas answering HTTP themselves."""
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAINING_S),
    }


def _acl(prefix: str) -> str:
    """The prefix itself or anything under it: /models/1 is not /models/10."""
    if prefix == "/":
        return "TRUE"
    return f"{{ path {prefix} }} || {{ path_beg {prefix.rstrip('/')}/ }}"


def render(cfg: FrontConfig, routes: list[Route]) -> str:
    """The HAProxy config for these routes (pure: the tests read it)."""
    folder = Path(cfg.folder)
    lines = [
        "global",
        "  maxconn 4096",
        "  nbthread 2",
        "  hard-stop-after 30s",
        f"  tune.bufsize {BUFFER}",
        "defaults",
        "  mode http",
        "  option http-keep-alive",
        # A reload (a replica gone or come) leaves idle keep-alive connections open in the
        # old process until their next answer, which says Connection: close; closed at once,
        # a client sending on one just then sees a disconnect instead of an answer.
        "  option idle-close-on-response",
        "  option forwardfor",  # Serve's uvicorn takes the client's address from loopback
        "  option redispatch",
        "  retries 2",
        "  retry-on conn-failure",  # never a request that reached a replica: POSTs are not all safe
        "  timeout connect 2s",
        "  timeout client 1h",
        "  timeout server 1h",
        "  timeout http-request 60s",
        "  timeout http-keep-alive 60s",
    ]
    lines += [f"  errorfile {status} {folder / f'{status}.http'}" for status in ERRORS]
    lines += ["frontend api", f"  bind {cfg.host}:{cfg.port}"]
    ordered = sorted((r for r in routes if r.ports), key=lambda r: (-len(r.prefix), r.prefix))
    for n, route in enumerate(ordered):
        lines.append(f"  use_backend route{n} if {_acl(route.prefix)}")
    lines.append("  default_backend serve")
    for n, route in enumerate(ordered):
        # /-/routes answers what /-/healthz does (503 while draining), and names the route
        # the replica serves: a port Serve has handed on to another application's replica
        # (after a restart) is then marked down, not sent this route's requests to be
        # refused 404 as a path the other application does not serve.
        lines += [
            f"backend route{n}",
            "  option httpchk GET /-/routes",
            f"  http-check expect string '{{\"{route.prefix}\":'",
        ]
        limit = ""
        if route.prefix.startswith(MODEL_PREFIX):
            lines += [
                f"  timeout queue {QUEUE_S}s",
                # A body that fits the buffer is held whole, so that it can be sent again; a
                # larger one streams (and, declared over a replica's limit, is refused by
                # the replica before it is read, as without the front).
                "  http-request wait-for-body time 1s"
                f" if {{ req.hdr_val(content-length) le {BUFFER} }}",
                f"  retry-on {MODEL_RETRY_ON}",
                # An answer is forwarded once whole: one cut short (its replica killed while
                # writing it) is then the JSON 503 below, not half a body.
                "  http-response wait-for-body time 5s",
                # A connection to a replica serves one request: on a kept one, a replica
                # killed under it makes HAProxy close the client's without an answer (as a
                # server would, for the client to retry), where a new one gets the JSON 503.
                "  option http-server-close",
            ]
            limit = f" maxconn {MODEL_MAXCONN}"
        # A replica that refuses a connection is taken out at once, not at its next check:
        # the retry goes to another, or to Serve's proxy, which holds it until Serve has a
        # replica again.
        lines += [
            f"  server replica{i} 127.0.0.1:{port} check inter {CHECK_INTER_MS} fall 1 rise 1"
            " observe layer4 error-limit 1 on-error mark-down" + limit
            for i, port in enumerate(route.ports)
        ]
        lines.append(f"  server serve 127.0.0.1:{cfg.serve_port} backup")
    lines += ["backend serve", f"  server serve 127.0.0.1:{cfg.serve_port}"]
    return "\n".join(lines) + "\n"


def error_page(status: int) -> str:
    sent, code, message = ERRORS[status]
    reason = {503: "Service Unavailable", 504: "Gateway Timeout"}[sent]
    body = f'{{"code": "{code}", "message": "{message}"}}'
    return (
        f"HTTP/1.1 {sent} {reason}\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        f"Cache-Control: no-cache\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
        f"\r\n{body}"
    )


def routes_from(groups: list[Any]) -> list[Route]:
    """Serve's target groups (HTTP ones) as routes."""
    found = []
    for group in groups:
        if str(group.protocol).rsplit(".", 1)[-1] != "HTTP" or not group.route_prefix:
            continue
        ports = tuple(sorted(int(t.port) for t in group.targets))
        found.append(Route(group.route_prefix, ports))
    return found


class Front:
    """HAProxy kept running and in step with Serve, from a daemon thread of the controller."""

    def __init__(self, cfg: FrontConfig, haproxy: str) -> None:
        self.cfg = cfg
        self.haproxy = haproxy
        self.folder = Path(cfg.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for status in ERRORS:
            (self.folder / f"{status}.http").write_text(error_page(status))
        self.config_path = self.folder / "haproxy.cfg"
        self.pid_path = self.folder / "haproxy.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        self.rendered = ""
        self.routes: list[Route] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        """Bind the port now (every route to Serve's proxy until replicas are known), then
        follow Serve from a thread. A front a previous controller left is adopted as it
        is: its routes stand until Serve's are read (no reload to none in between)."""
        self.bind()
        threading.Thread(target=self._follow, name="front", daemon=True).start()

    def bind(self) -> None:
        """Adopt the HAProxy a previous controller left, as it is, or start one with no
        routes (all to Serve's proxy)."""
        if self._running() is not None and self.config_path.exists():
            self.rendered = self.config_path.read_text()
            log.info("front (HAProxy) adopted, pid %s", self._running())
        else:
            self.sync([])

    def sync(self, routes: list[Route]) -> None:
        """Write the config for these routes; start HAProxy, or reload it if it changed."""
        with self.lock:
            text = render(self.cfg, routes)
            pid = self._running()
            if pid is not None and text == self.rendered:
                return
            self.config_path.write_text(text)
            self.rendered, self.routes = text, routes
            if pid is None:
                self._launch()
            else:
                os.kill(pid, signal.SIGUSR2)
                log.info("front reloaded: %s", [(r.prefix, r.ports) for r in routes])

    def _keep_up(self) -> None:
        """HAProxy started again on the config it last had, if it died."""
        with self.lock:
            if self._running() is None:
                if not self.config_path.exists():
                    self.config_path.write_text(render(self.cfg, self.routes))
                self._launch()

    def _running(self) -> int | None:
        """The master's PID: ours, or one a previous controller left (adopted)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                return self.proc.pid
            log.error("the front (HAProxy) exited with %s: starting it again", self.proc.returncode)
            self.proc = None
            return None
        return left_running(self.folder)

    def _launch(self) -> None:
        # A process group of its own, so that Ray ending the controller's group (a kill -9
        # of the controller) leaves the API answering; the next controller adopts it. In the
        # head's session all the same: `ncloud server stop` ends it with the rest.
        log_file = open(self.folder / "haproxy.log", "ab")  # noqa: SIM115 (HAProxy's to keep)
        self.proc = subprocess.Popen(
            [self.haproxy, "-W", "-db", "-f", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        log_file.close()
        self.pid_path.write_text(str(self.proc.pid))
        log.info("front (HAProxy) started on %s:%s, pid %s", self.cfg.host, self.cfg.port,
                 self.proc.pid)  # fmt: skip

    def _follow(self) -> None:
        while True:
            try:
                self.sync(routes_from(_target_groups()))
            except Exception as exc:  # Serve not up yet, or restarting: keep the last routes
                log.debug("front: %s", exc)
                with contextlib.suppress(Exception):
                    self._keep_up()
            time.sleep(POLL_S)


def left_running(folder: Path) -> int | None:
    """The PID of the HAProxy master that a Front on `folder` started, if it still runs."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((folder / "haproxy.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if processes.running(pid) and str(folder / "haproxy.cfg").encode() in cmdline:
            return pid
    return None


def stop_left(folder: Path) -> None:
    """End the front a dead head left behind: it would hold the API's port (its master and
    workers are one process group)."""
    pid = left_running(folder)
    if pid is None:
        return
    log.warning("ending the front (HAProxy, pid %s) a previous server left running", pid)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and processes.running(pid):
            time.sleep(0.1)
        if not processes.running(pid):
            return


def _target_groups() -> list[Any]:
    """Serve's controller's view of every application's replicas and their ports."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    return list(ray.get(controller.get_target_groups.remote(), timeout=10))
