"""A second Ray node on this machine: a tenant's worker placed there reads the dataset and
writes checkpoints only through storage and that node's own cache."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from examples.digits import make_digits
from tests.integration.conftest import CPUS, Server, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def second_node(server: Server, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`ray start --address ... --block` in its own session, with its own temp dir and cache."""
    cache = tmp_path / "node2-cache"
    # Ray's socket paths must stay under 108 bytes: a short temp dir of the node's own.
    temp_dir = Path(tempfile.mkdtemp(prefix="ncn2-", dir="/tmp"))
    env = {
        **server.env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(server.home / "ray-auth-token"),
        "NCLOUD_CACHE_DIR": str(cache),
    }
    log = open(tmp_path / "node2.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--block",
            f"--address=127.0.0.1:{server.ports['ray']}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--resources",
            json.dumps({"node2": 1}),
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        try:
            wait_for(lambda: _node(server) is not None, 120, "the second node to join")
        except AssertionError as exc:
            tail = (tmp_path / "node2.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{exc}; its log ends:\n{tail}") from None
        yield {"cache": cache, "node_id": _node(server)}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _node(server: Server) -> str | None:
    from ray.util.state import list_nodes

    for node in list_nodes(address=server.dashboard_url):
        if node.state == "ALIVE" and "node2" in (node.resources_total or {}):
            return str(node.node_id)
    return None


def test_a_worker_on_another_node_trains_through_storage(
    server: Server, second_node: dict[str, Any], tmp_path: Path, tenant: Any
) -> None:
    from ray.util.state import list_actors

    tenant("filler", cpus=CPUS)  # the head's CPUs are all reserved: the next tenant lands on node 2
    tenant("faraway", cpus=1, memory="1GiB")
    user = server.client().users.add("far@example.com", ["faraway"])
    try:
        make_digits(tmp_path / "digits", size=16)
        out = server.cli(
            "dataset",
            "upload",
            str(tmp_path / "digits" / "valid.tsv"),
            "--name",
            "far",
            "-o",
            "json",
            token=user["token"],
            tenant="faraway",
            timeout=600,
        )
        dataset = json.loads(out.stdout)["id"]
        client = server.client(token=user["token"], tenant="faraway")
        model = client.models.train(
            "far-mlp", "mlp.yaml", (ROOT / "examples/mlp.yaml").read_text(), dataset, epochs=2
        )
        found = wait_for(
            lambda: (
                (m := client.models.show(model["id"]))["status"]
                in ("Completed", "Failed", "Stopped")
                and m
            ),
            300,
            "the run to end",
        )
        assert found["status"] == "Completed", found["error"]
        assert found["checkpoints"] == [1, 2]
        workers = list_actors(
            address=server.dashboard_url,
            filters=[("class_name", "=", "TrainWorker"), ("state", "=", "ALIVE")],
            detail=True,
        )
        placed = [w for w in workers if "faraway" in (w.name or "")]
        assert placed and all(w.node_id == second_node["node_id"] for w in placed)
        cached = list((second_node["cache"] / "shards").glob("*.ok"))
        assert cached, "the worker on node 2 did not fill node 2's cache"
    finally:
        server.client().users.remove("far@example.com")


def _control_plane_nodes(server: Server) -> dict[str, str]:
    """class name -> node id of each live control-plane actor."""
    from ray.util.state import list_actors

    found = {}
    for name in ("Controller", "ServeReplica:ncloud-api:api"):
        alive = list_actors(
            address=server.dashboard_url,
            filters=[("class_name", "=", name), ("state", "=", "ALIVE")],
            detail=True,
        )
        if len(alive) == 1:
            found[name] = str(alive[0].node_id)
    return found


def test_the_control_plane_comes_back_on_the_head_when_a_worker_node_exists(
    server: Server, second_node: dict[str, Any]
) -> None:
    """Killed with a second node free to take it, the controller (and the API's replica) is
    placed on the head again: a worker node's loss must not take the control plane."""
    before = _control_plane_nodes(server)
    assert len(before) == 2 and second_node["node_id"] not in before.values(), before
    for name in before:
        from ray.util.state import list_actors

        (actor,) = list_actors(
            address=server.dashboard_url,
            filters=[("class_name", "=", name), ("state", "=", "ALIVE")],
        )
        assert actor.pid is not None
        os.kill(int(actor.pid), signal.SIGKILL)
        wait_for(partial(_replaced, server, name, int(actor.pid)), 120, f"{name} back")
    after = _control_plane_nodes(server)
    assert after == before, (after, second_node["node_id"])
    server.client().info()  # and the API answers


def _replaced(server: Server, class_name: str, pid: int) -> bool:
    from ray.util.state import list_actors

    alive = list_actors(
        address=server.dashboard_url,
        filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
    )
    return len(alive) == 1 and alive[0].pid != pid
