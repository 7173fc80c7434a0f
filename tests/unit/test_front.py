"""The front's HAProxy config: what HAProxy itself says of it, and where each path goes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster.control import front

CFG = front.FrontConfig("127.0.0.1", 8000, 40123, "/tmp/ncloud-front-test")


def _groups() -> list[SimpleNamespace]:
    def group(prefix: str, *ports: int, protocol: str = "RequestProtocol.HTTP") -> SimpleNamespace:
        targets = [SimpleNamespace(port=p) for p in ports]
        return SimpleNamespace(route_prefix=prefix, protocol=protocol, targets=targets)

    return [
        group("/models", 30001),
        group("/api/v1", 30000),
        group("/models/1", 30004, 30003),
        group("/models/10", 30005),
        group("/models/1", 40000, protocol="RequestProtocol.GRPC"),
        group("/ui"),  # no replica running: left to Serve's proxy
    ]


def test_routes_are_the_http_groups_with_their_ports() -> None:
    routes = front.routes_from(_groups())
    assert front.Route("/models/1", (30003, 30004)) in routes
    assert all(r.ports != (40000,) for r in routes)  # gRPC is not the front's
    assert front.Route("/ui", ()) in routes


def test_longest_prefix_first_and_a_prefix_is_not_a_name_start() -> None:
    text = front.render(CFG, front.routes_from(_groups()))
    rules = [line.split()[1] for line in text.splitlines() if "use_backend" in line]
    prefixes = [line.split("{ path ")[1].split()[0] for line in text.splitlines()
                if "use_backend" in line]  # fmt: skip
    assert prefixes == ["/models/10", "/models/1", "/api/v1", "/models"]
    assert len(rules) == 4  # /ui, with no replica, falls to the default: Serve's proxy
    assert "{ path /models/1 } || { path_beg /models/1/ }" in text  # /models/10 is not /models/1
    assert "bind 127.0.0.1:8000" in text
    assert text.count("server serve 127.0.0.1:40123 backup") == 4  # every route falls back
    assert "default_backend serve" in text
    assert "check inter" in text and "option httpchk GET /-/routes" in text
    # a port Serve gave to another application's replica fails the check: it names its route
    assert """http-check expect string '{"/models/1":'""" in text
    # A model's replicas take MODEL_MAXCONN at a time, the rest wait in HAProxy; the API's
    # (long uploads) and the /models fallback's do not.
    model = text.split("backend route1\n")[1].split("backend ")[0]  # /models/1
    assert f"maxconn {front.MODEL_MAXCONN}" in model and "timeout queue" in model
    api = text.split("backend route2\n")[1].split("backend ")[0]  # /api/v1
    assert "maxconn" not in api and "timeout queue" not in api
    # A prediction whose replica died under it is sent again to another; an API call (an
    # upload, a create) never: only one that never reached a replica.
    assert "retry-on conn-failure empty-response" in model and "wait-for-body" in model
    assert "req.hdr_val(content-length) le 65536" in model  # a huge body streams, refused early
    assert "retry-on" not in api and "wait-for-body" not in api
    assert "  retry-on conn-failure\n" in text.split("frontend api")[0]


def test_error_pages_are_json_with_retry_after() -> None:
    sent = {502: 503, 503: 503, 504: 504}  # a replica gone mid-request: 503, retry
    for status in front.ERRORS:
        page = front.error_page(status)
        head, _, body = page.partition("\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {sent[status]} ")
        assert "Retry-After: 1" in head and f"Content-Length: {len(body)}" in head
        assert set(json.loads(body)) == {"code", "message"}


def test_haproxy_accepts_the_config(tmp_path: Path) -> None:
    haproxy = front.binary()
    if haproxy is None:
        pytest.skip("no HAProxy on this machine (make install puts it there)")
    cfg = front.FrontConfig("127.0.0.1", 8000, 40123, str(tmp_path))
    made = front.Front(cfg, haproxy)  # writes the error pages
    made.config_path.write_text(front.render(cfg, front.routes_from(_groups())))
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(made.config_path)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_front_left_running_is_adopted_with_its_routes(tmp_path: Path) -> None:
    """A new controller keeps the routes of the HAProxy it adopts until it reads Serve's."""
    import socket

    haproxy = front.binary()
    if haproxy is None:
        pytest.skip("no HAProxy on this machine (make install puts it there)")
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cfg = front.FrontConfig("127.0.0.1", ports[0], ports[1], str(tmp_path))
    first, adopter = front.Front(cfg, haproxy), front.Front(cfg, haproxy)
    first.sync(front.routes_from(_groups()))
    deadline = time.monotonic() + 10
    while (pid := front.left_running(tmp_path)) is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until the child has exec'd HAProxy
    try:
        assert pid is not None and first.proc is not None and first.proc.pid == pid
        rendered = first.config_path.read_text()
        assert "/models/10" in rendered
        adopter.bind()  # what start() does before its thread reads Serve's routes
        assert adopter.rendered == rendered and adopter.config_path.read_text() == rendered
        time.sleep(0.5)
        assert front.left_running(tmp_path) == pid  # the same master, never reloaded to none
        assert "reload" not in (tmp_path / "haproxy.log").read_text().lower()
    finally:
        if first.proc is not None:  # the master and its worker: a process group of their own
            os.killpg(first.proc.pid, signal.SIGKILL)
            first.proc.wait(timeout=10)
