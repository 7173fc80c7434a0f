"""The front door (cluster/control/front.py): HAProxy on the API's port, straight to Serve's
replicas, answering through a kill -9 of Serve's proxy or of the controller."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import httpx

from tests.integration.conftest import Server, actor_pid, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _front_config(server: Server) -> str:
    return (server.home / "front" / "haproxy.cfg").read_text()


def _status(server: Server) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "ncloud.cli.main", "server", "status", "-o", "json"],
        env=server.env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


class Poller:
    """GET /health every 50 ms from a thread; every answer that was not a 200, with when."""

    def __init__(self, url: str) -> None:
        self.url, self.failures, self.answers = url, list[tuple[float, str]](), 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.done.wait(0.05):
                try:
                    r = http.get(self.url)
                    if r.status_code != 200:
                        failed = f"HTTP {r.status_code} {r.text[:120]}"
                        self.failures.append((time.monotonic(), failed))
                except httpx.HTTPError as exc:
                    self.failures.append((time.monotonic(), type(exc).__name__))
                self.answers += 1

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def test_the_api_is_served_by_its_replica_through_the_front(server: Server) -> None:
    status = _status(server)
    serve_url = str(status["serve_url"])
    assert serve_url.startswith("http://127.0.0.1:") and serve_url not in server.api_url
    config = _front_config(server)
    api = re.search(r"use_backend (route\d+) if \{ path /api/v1 \}", config)
    assert api, config
    servers = re.findall(rf"backend {api.group(1)}\n(?:  .*\n)*", config)[0]
    assert re.search(r"server replica0 127\.0\.0\.1:\d+ check", servers), servers
    assert f"server serve 127.0.0.1:{serve_url.rsplit(':', 1)[1]} backup" in servers
    # Serve's proxy serves the API as well (the backup), on loopback only.
    assert httpx.get(f"{serve_url}/api/v1/health", timeout=10).status_code == 200
    # What the front answers itself when nothing behind a route answers: JSON, Retry-After.
    page = (server.home / "front" / "503.http").read_text()
    assert page.startswith("HTTP/1.1 503") and '"code": "unavailable"' in page


def _replaced(server: Server, name: str, old: int) -> bool:
    return actor_pid(server, name) != old


def test_a_kill_9_of_serves_proxy_or_the_controller_leaves_the_api_answering(
    server: Server,
) -> None:
    url = f"{server.api_url}/api/v1/health"
    for name in ("ProxyActor", "Controller"):
        pid = actor_pid(server, name)
        with Poller(url) as poll:
            time.sleep(0.5)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_for(partial(_replaced, server, name, pid), 120, f"a new {name}")
            replaced = time.monotonic()
            time.sleep(2)  # the new controller has adopted the front (and reloaded it)
        assert poll.answers > 20
        assert poll.failures == [], f"{name} killed: {poll.failures[:5]}"
        print(f"\ntimeline, kill -9 of the {name}: a new one {replaced - killed:.1f} s later; "
              f"{poll.answers} polls of /api/v1/health every 50 ms, 0 failed")  # fmt: skip
    # The adopted front still follows Serve: it is the same HAProxy master, in step.
    assert httpx.get(url, timeout=10).status_code == 200
