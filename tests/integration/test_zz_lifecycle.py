"""Stop/start and SIGKILL keep every record; reservations come back. Runs last (it restarts)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from examples.digits import make_digits
from ncloud.client import Client
from tests.integration.conftest import Server, actor_pid, upload_dataset, wait_for
from tests.integration.lab import TERMINAL, slow_py, until
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


EPOCHS = 20


def _epochs(client: Client, model_id: int) -> int:
    return int(client.models.show(model_id)["epochs_done"])


def _at(model: Any, status: str) -> list[float]:
    """When the model's last run entered `status`, each time, as epoch seconds."""
    return [
        dt.datetime.fromisoformat(h["at"]).replace(tzinfo=dt.UTC).timestamp()
        for h in model["runs"][-1]["history"]
        if h["status"] == status
    ]


def _until_epochs(client: Client, model_id: int, epochs: int, what: str) -> None:
    try:
        wait_for(lambda: _epochs(client, model_id) >= epochs, 240, what)
    except AssertionError as exc:
        shown = client.models.show(model_id)
        steps = [
            (h["at"][11:19], h["status"], h["note"][:80]) for h in shown["runs"][-1]["history"]
        ]
        raise AssertionError(
            f"{exc}: {shown['status']} at {shown['epochs_done']}: {steps}"
        ) from exc


@pytest.mark.timeout(900)
def test_a_run_spans_a_stop_start_a_kill_9_and_a_hard_stop_spending_no_restart(
    server: Server, tmp_path: Path
) -> None:
    """Determined's master-restart bar: the run goes on from its checkpoint each time, its
    epochs continuing, with no restart charged (it may spend none: --max-restarts 0); every
    record, token and reservation comes back each time."""
    c = server.client()
    c.tenants.add("spans", 1, 0, "512MiB")
    user = c.users.add("sam@example.com", ["spans"])
    try:
        make_digits(tmp_path / "digits", size=8)
        ds = upload_dataset(server, tmp_path / "digits" / "valid.tsv", "d", user["token"], "spans")
        me = server.client(token=user["token"], tenant="spans")
        model = me.models.train(
            "spans", "net.py", slow_py(sleep=0.25), ds, epochs=EPOCHS, max_restarts=0,
            checkpoint_every=1,
        )  # fmt: skip
        mid = model["id"]
        _until_epochs(me, mid, 2, "two epochs before the stop")
        extra = me.tokens.create("second")  # made before the stops: kept, and in the audit log
        behind = me.models.train("behind", "net.py", slow_py(sleep=0.0), ds, epochs=1)["id"]
        assert me.models.show(behind)["status"] == "Queued"  # the tenant's one slot is taken

        t_stop = time.time()
        said = server.stop()
        t_stopped = time.time()
        assert said.get("suspended_models") == [mid], said
        gone = server.cli("info", check=False)
        assert gone.returncode == 1 and "cannot reach ncloud" in gone.stderr
        again = server.start()
        t_started = time.time()
        assert again["admin_token"] is None  # the first admin exists already
        _kept(server, extra["token"])
        me = server.client(token=user["token"], tenant="spans")
        before = _epochs(me, mid)
        _until_epochs(me, mid, before + 2, "two epochs after the start")
        shown = me.models.show(mid)
        steps = [h["status"] for h in shown["runs"][-1]["history"]]
        assert "Suspended" in steps and steps[steps.index("Suspended") + 1] == "Queued", steps
        assert shown["restarts"] == 0 and len(shown["runs"]) == 1, shown

        assert shown["epochs_done"] < EPOCHS - 6, (
            "the run must still be going for the kill to mean anything"
        )
        assert me.models.show(behind)["status"] == "Queued"  # still behind it, at its place
        # kill -9 of every process of the server, mid-epoch: the same, from the last checkpoint
        pid = int(json.loads((server.home / "server.json").read_text())["pid"])
        t_kill = time.time()
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: server.cli("info", check=False).returncode == 1, 60, "the server to die")
        server.start()
        t_restarted = time.time()
        _kept(server, extra["token"])
        me = server.client(token=user["token"], tenant="spans")
        at_kill = _epochs(me, mid)
        _until_epochs(me, mid, at_kill + 1, "an epoch after the kill -9")
        # `server stop --hard`: nothing suspended, and the same again from the last checkpoint
        at_hard = _epochs(me, mid)
        assert at_hard < EPOCHS, "the run must still be going for --hard to mean anything"
        said = server.stop(hard=True)
        assert said.get("stopped") and "suspended_models" not in said, said
        server.start()
        me = server.client(token=user["token"], tenant="spans")
        done = until(me, mid, TERMINAL, 400)
        after = until(me, behind, TERMINAL, 240)
        assert after["status"] == "Completed" and after["restarts"] == 0, after
        first_admitted = _at(after, "Starting")
        assert first_admitted[0] > _at(done, "Completed")[-1], "the queue kept its order"
        assert done["status"] == "Completed" and done["restarts"] == 0, done
        assert done["epochs_done"] == EPOCHS and len(done["runs"]) == 1
        epochs = [m["epoch"] for m in done["metrics"]]
        assert sorted(set(epochs)) == list(range(1, EPOCHS + 1)), epochs  # each epoch, none lost
        notes = [h["note"] for h in done["runs"][-1]["history"]]
        went_down = [n for n in notes if "the server went down under it" in n]
        assert len(went_down) >= 2, notes  # the kill -9, then the --hard stop
        running = _at(done, "Running")
        print(
            f"\ntimeline, server stop with a run at epoch {before}: stop took "
            f"{t_stopped - t_stop:.1f} s (Suspended {_at(done, 'Suspended')[0] - t_stop:.1f} s "
            f"after it began), start {t_started - t_stopped:.1f} s, the run Running again "
            f"{running[1] - t_stopped:.1f} s after the stop returned, at epoch {before + 1}"
            f"\ntimeline, kill -9 of the whole server: start {t_restarted - t_kill:.1f} s after "
            f"the kill, Running again {running[2] - t_kill:.1f} s after the kill; "
            f"\nthen `server stop --hard` at epoch {at_hard}: the same; restarts "
            f"{done['restarts']}, epochs 1..{EPOCHS} each recorded"
        )
        kept = server.client().audit.list(user="sam@example.com")
        assert ("POST /tokens", 201) in [(r["action"], r["status"]) for r in kept], kept
    finally:
        if server.cli("info", check=False).returncode != 0:  # say why, then carry on
            print(_log_tail(server))
            server.start()
        c = server.client()
        c.users.remove("sam@example.com")
        c.tenants.remove("spans", force=True)


def _kept(server: Server, token: str) -> None:
    """After a start: the user's token, made before, is accepted; its reservation is back."""
    as_sam = server.client(token=token, tenant="spans")
    assert as_sam.info()["user"]["email"] == "sam@example.com"
    found = wait_for(
        lambda: (r := as_sam.resources.list())["state"] == "CREATED" and r, 60, "the reservation"
    )
    assert found["reserved"]["cpus"] == 1, found


def _log_tail(server: Server) -> str:
    log = server.home / "logs" / "server.log"
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no server.log)"
