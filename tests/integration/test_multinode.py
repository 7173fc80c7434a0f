"""A second Ray node on this machine: a tenant's worker placed there reads the dataset and
writes checkpoints only through storage and that node's own cache."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from examples.digits import make_digits
from ncloud.errors import NcloudError, QuotaExceeded
from tests.integration.conftest import CPUS, Server, wait_for
from tests.integration.lab import TERMINAL, slow_py
from tests.integration.nodes import RayNode

ROOT = Path(__file__).resolve().parents[2]


def _join(server: Server, folder: Path, label: str) -> RayNode:
    """A worker node joined to the session's cluster, its env the server's."""
    env = {
        **server.env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(server.home / "ray-auth-token"),
    }
    return RayNode(folder, label, env, f"127.0.0.1:{server.ports['ray']}", server.dashboard_url)


@pytest.fixture
def second_node(server: Server, tmp_path: Path) -> Iterator[dict[str, Any]]:
    node = _join(server, tmp_path, "node2")
    try:
        yield {"cache": node.cache, "node_id": node.node_id}
    finally:
        node.stop()


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


def test_a_lost_worker_node_sends_its_run_back_to_the_queue_to_resume(
    server: Server, tmp_path: Path, tenant: Any
) -> None:
    """SIGKILL of the node under a run: the API goes on answering, the run goes back to the
    queue without spending a restart, and resumes from its last checkpoint on the node that
    replaces the lost one. The closing note's timeline comes from what this prints."""
    tenant("filler", cpus=CPUS)  # the head is full: the tenant's bundle is on the new node
    lost = _join(server, tmp_path, "node2")
    replacement = None
    user = None
    try:
        tenant("faraway", cpus=1, memory="1GiB")
        user = server.client().users.add("lost@example.com", ["faraway"])
        make_digits(tmp_path / "digits", size=16)
        out = server.cli(
            "dataset", "upload", str(tmp_path / "digits" / "valid.tsv"), "--name", "far",
            "-o", "json", token=user["token"], tenant="faraway", timeout=600,
        )  # fmt: skip
        client = server.client(token=user["token"], tenant="faraway")
        model = client.models.train(
            "slow", "net.py", slow_py(sleep=0.2), json.loads(out.stdout)["id"], epochs=12
        )
        wait_for(
            lambda: (
                (m := client.models.show(model["id"]))["status"] == "Running" and m["checkpoints"]
            ),
            300,
            "a checkpoint of the running run",
        )
        killed = time.monotonic()
        lost.kill()
        answered = wait_for(lambda: server.client().info(), 30, "the API to answer") and (
            time.monotonic() - killed
        )
        queued = wait_for(
            lambda: (m := client.models.show(model["id"]))["status"] in ("Queued", *TERMINAL) and m,
            180,
            "the run to go back to the queue",
        )
        requeued = time.monotonic() - killed
        assert queued["status"] == "Queued", (queued["error"], queued["runs"][-1]["history"])
        assert queued["restarts"] == 0 and queued["reason"], queued
        replacement = _join(server, tmp_path, "node3")
        done = wait_for(
            lambda: (m := client.models.show(model["id"]))["status"] in TERMINAL and m,
            300,
            "the run to end",
        )
        resumed = time.monotonic() - killed
        assert done["status"] == "Completed" and done["epochs_done"] == 12, done
        assert done["restarts"] == 0, done
        statuses = [h["status"] for h in done["runs"][-1]["history"]]
        assert statuses.index("Queued", 1) > statuses.index("Running"), statuses
        log = "\n".join(e["line"] for e in client.models.logs(model["id"])["lines"])
        assert "resumed from the checkpoint of epoch" in log, log[-2000:]
        print(
            f"node loss: killed at 0 s; API answered at {answered:.1f} s; run queued at "
            f"{requeued:.1f} s; completed on the replacement node at {resumed:.1f} s"
        )
    finally:
        if user is not None:
            server.client().users.remove("lost@example.com")
        lost.stop()
        if replacement is not None:
            replacement.stop()


def test_a_tenant_larger_than_the_nodes_waits_for_the_autoscaler(
    server: Server, tmp_path: Path, tenant: Any
) -> None:
    """With an autoscaler that may add one 1-CPU node, a tenant of CPUS + 1 is accepted and
    Pending with a reason until a node joins; one larger than that is refused at once."""
    config = server.home / "autoscaler.yaml"
    config.write_text(
        "head_node_type: head\navailable_node_types:\n"
        f"  head: {{resources: {{CPU: {CPUS}}}, max_workers: 0}}\n"
        "  grow: {resources: {CPU: 1}, max_workers: 1}\n"
    )
    node = None
    try:
        with pytest.raises(QuotaExceeded, match="autoscaler cannot grow it that far"):
            tenant("huge", cpus=CPUS + 2)
        made = tenant("grows", cpus=CPUS + 1)
        assert made["state"] == "PENDING" and "autoscaler" in made["reason"], made
        node = _join(server, tmp_path, "grown")  # what the autoscaler would have launched
        placed = wait_for(
            lambda: (
                (r := server.client().tenants.show("grows")["reservation"])["state"] == "CREATED"
                and r
            ),
            120,
            "the reservation to be placed on the new node",
        )
        assert placed["reason"] is None
    finally:
        config.unlink()
        if node is not None:
            with contextlib.suppress(NcloudError):
                server.client().tenants.remove("grows", force=True)
            node.stop()
