"""Stop/start and SIGKILL keep every record; reservations come back. Runs last (it restarts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Server, actor_pid, wait_for
from tests.s3 import free_port


def _restarted(server: Server, class_name: str, pid: int) -> Callable[[], bool]:
    return lambda: actor_pid(server, class_name) != pid


def _snapshot(server: Server) -> tuple[list[str], list[str]]:
    c = server.client()
    return sorted(t["name"] for t in c.tenants.list()), sorted(u["email"] for u in c.users.list())


def test_a_second_server_on_the_same_store_is_refused(server: Server, tmp_path: Path) -> None:
    """Another home (another machine) pointed at this server's store: it would schedule the
    same runs, so `server start` refuses before starting anything, naming the holder."""
    env = {
        **server.env,
        "NCLOUD_HOME": str(tmp_path / "other-home"),
        "NCLOUD_RC": str(tmp_path / "other-rc"),
        "NCLOUD_DB_URL": f"sqlite:///{server.home / 'ncloud.db'}",
    }
    ports = [str(free_port()) for _ in range(3)]
    out = subprocess.run(
        [sys.executable, "-m", "ncloud.cli.main", "server", "start", "--single-tenant",
         "--port", ports[0], "--ray-port", ports[1], "--dashboard-port", ports[2]],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "another ncloud control plane" in out.stderr.strip().splitlines()[-1], out.stderr
    assert not (tmp_path / "other-home" / "server.json").exists()
    server.client().info()  # the first one goes on


def test_sigkill_of_the_control_plane_loses_nothing(server: Server) -> None:
    c = server.client()
    c.tenants.add("durable", 1, 0, "128MiB")
    user = c.users.add("kim@example.com", ["durable"])
    try:
        before = _snapshot(server)
        for actor in ("Controller", "ServeReplica:ncloud-api:api"):
            pid = actor_pid(server, actor)
            os.kill(pid, signal.SIGKILL)
            wait_for(_restarted(server, actor, pid), 120, f"{actor} restart")
        wait_for(lambda: server.client().info(), 120, "the API to answer again")
        assert _snapshot(server) == before
        as_kim = server.client(token=user["token"])
        assert wait_for(
            lambda: as_kim.resources.list()["state"] == "CREATED", 60, "the reservation"
        )
    finally:
        c.users.remove("kim@example.com")
        c.tenants.remove("durable", force=True)


@pytest.mark.timeout(600)
def test_stop_and_start_bring_everything_back(server: Server) -> None:
    c = server.client()
    c.tenants.add("persist", 1, 0, "128MiB")
    user = c.users.add("lee@example.com", ["persist"])
    extra = server.client(token=user["token"]).tokens.create("second")
    try:
        server.stop()
        gone = server.cli("info", check=False)
        assert gone.returncode == 1 and "cannot reach ncloud" in gone.stderr
        again = server.start()
        assert again["admin_token"] is None  # the first admin exists already
        as_lee = server.client(token=extra["token"], tenant="persist")
        assert as_lee.info()["user"]["email"] == "lee@example.com"
        found = wait_for(lambda: as_lee.resources.list(), 60, "the reservation")
        assert found["state"] == "CREATED" and found["reserved"]["cpus"] == 1

        # SIGKILL the whole server (head and everything it started), then start again.
        state_pid = int(json.loads((server.home / "server.json").read_text())["pid"])
        os.killpg(state_pid, signal.SIGKILL)
        wait_for(lambda: server.cli("info", check=False).returncode == 1, 60, "the server to die")
        server.start()
        assert server.client(token=extra["token"]).info()["user"]["email"] == "lee@example.com"
        found = wait_for(lambda: as_lee.resources.list(), 60, "the reservation after SIGKILL")
        assert found["state"] == "CREATED"
        # The audit log is kept across both: lee's token, made before the stop, is in it.
        kept = server.client().audit.list(user="lee@example.com")
        assert [(r["action"], r["status"]) for r in kept] == [("POST /tokens", 201)], kept
    finally:
        c = server.client()
        c.users.remove("lee@example.com")
        c.tenants.remove("persist", force=True)
