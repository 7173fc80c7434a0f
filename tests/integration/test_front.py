"""The front door (cluster/control/front.py): HAProxy on the API's port, straight to Serve's
replicas, answering the API and a deployed model's predictions through a kill -9 of Serve's
proxy or of the controller."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import Server, actor_pid, wait_for
from tests.integration.serving import deployed, features_manifest, predict_url, trained

ROOT = Path(__file__).resolve().parents[2]


def _front_config(server: Server) -> str:
    return (server.home / "front" / "haproxy.cfg").read_text()


def _status(server: Server) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "ncloud.cli.main", "server", "status", "-o", "json"],
        env=server.env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


Call = Callable[[httpx.Client], httpx.Response]


class Poller:
    """One call every 50 ms from a thread; every answer that was not a 200, with when."""

    def __init__(self, call: Call) -> None:
        self.call, self.failures, self.answers = call, list[tuple[float, str]](), 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.done.wait(0.05):
                try:
                    r = self.call(http)
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


def _model(server: Server, tenant: Callable[..., Any]) -> tuple[str, str, bytes]:
    """A features MLP trained and deployed for a tenant of its own: its route, its token and
    one input it answers."""
    tenant("door", cpus=1, memory="1GiB")
    user = server.client().users.add("door@example.com", ["door"])
    client = server.client(token=user["token"], tenant="door")
    features = client.datasets.create("features", features_manifest(200), "f.tsv")["id"]
    client.datasets.ingest(features)
    wait_for(lambda: client.datasets.show(features)["status"] == "Ready", 120, "features")
    model = trained(client, "mlp", "features.yaml", features, epochs=1)
    token = deployed(client, model)["token"]
    row = json.dumps([0.5] * 64).encode()
    return predict_url(server, model), token, row


def test_a_kill_9_of_serves_proxy_or_the_controller_leaves_the_api_and_predictions_answering(
    server: Server, tenant: Callable[..., Any]
) -> None:
    url = f"{server.api_url}/api/v1/health"
    route, token, row = _model(server, tenant)
    auth = {"Authorization": f"Bearer {token}"}

    def predict(http: httpx.Client) -> httpx.Response:
        return http.post(route, headers=auth, files=[("file", ("x.json", row))])

    with httpx.Client(timeout=30) as http:
        assert predict(http).status_code == 200
    try:
        for name in ("ProxyActor", "Controller"):
            pid = actor_pid(server, name)
            with Poller(lambda http: http.get(url)) as api, Poller(predict) as model:
                time.sleep(0.5)
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                wait_for(partial(_replaced, server, name, pid), 120, f"a new {name}")
                replaced = time.monotonic()
                time.sleep(2)  # the new controller has adopted the front (and reloaded it)
            for what, poll in (("/api/v1/health", api), ("predictions", model)):
                assert poll.answers > 20, (name, what, poll.answers)
                assert poll.failures == [], f"{name} killed, {what}: {poll.failures[:5]}"
            print(f"\ntimeline, kill -9 of the {name}: a new one {replaced - killed:.1f} s later; "
                  f"polled every 50 ms: /api/v1/health {api.answers} times, a deployed model's "
                  f"predict {model.answers} times, 0 failed")  # fmt: skip
        # The adopted front still follows Serve: it is the same HAProxy master, in step.
        with httpx.Client(timeout=30) as http:
            assert http.get(url).status_code == 200 and predict(http).status_code == 200
    finally:
        server.client().users.remove("door@example.com")
