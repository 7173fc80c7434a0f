"""The platform on the shape of cluster a team runs: a Ray head started by hand (`ray
start --head`, no CPUs of its own, as Ray advises for a head) with two worker nodes of one
CPU each, the store on a real PostgreSQL server, the storage in S3 (the moto server), and
`ncloud server start --address` attaching the control plane to it.

On it, as a team would: a tenant of 3 GiB (over 32 bits) whose two bundles must sit on the
two worker nodes; upload and ingest; `-w 2` training with one worker on each node,
checkpoints in S3; S3 cut in the middle of an ingest (an Error that names it, mended
by ingesting again); deploy and predict; a batch; the control plane stopped and started
again (the cluster stays), everything still there and answering; a worker node lost in
the middle of an ingest, which then finishes on the node that replaces it; and the
database gone for a minute under a stream of writes.

Runs last: it stops the session's server first, so that one Ray cluster runs at a time on
this machine's 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from examples.digits import make_digits
from tests.integration.conftest import Server, upload_dataset, wait_for
from tests.integration.lab import TERMINAL
from tests.integration.nodes import RayNode
from tests.integration.serving import deployed, png_image, post
from tests.pg import PostgresServer
from tests.s3 import free_port

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "ncloud-cluster"
TENANT = "team"


@dataclass
class Cluster:
    server: Server
    head: RayNode
    nodes: dict[str, RayNode]
    pg: PostgresServer
    data: Path
    state: dict[str, Any]  # what one test leaves for the next
    started: list[RayNode]  # to stop at the end, the head first in it

    def join(self, label: str) -> RayNode:
        """Another worker node (the replacement of a lost machine)."""
        folder = self.data.parent
        node = RayNode(folder, label, self.server.env, self.head.address, self.head.dashboard_url)
        self.started.append(node)
        self.nodes[label] = node
        return node


def _attach(srv: Server, address: str) -> dict[str, Any]:
    out = srv.cli("server", "start", "--address", address, "--port", str(srv.ports["api"]),
                  "-o", "json", timeout=400)  # fmt: skip
    found: dict[str, Any] = json.loads(out.stdout)
    return found


@pytest.fixture(scope="module")
def cluster(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    server.stop()  # the session's own cluster goes: this one takes the machine
    folder = tmp_path_factory.mktemp("cluster")
    home = folder / "home"
    home.mkdir()
    # This process's Ray client holds the session's token (tests/conftest.py): the cluster
    # uses the same, as every node of a real cluster shares one.
    token = home / "ray-auth-token"
    shutil.copyfile(os.environ["RAY_AUTH_TOKEN_PATH"], token)
    os.chmod(token, 0o600)
    pg = PostgresServer()
    server.s3.fs().mkdir(BUCKET)
    env = {
        **server.env,
        "NCLOUD_HOME": str(home),
        "NCLOUD_RC": str(home / "ncloudrc"),
        "NCLOUD_DB_URL": pg.database("ncloud"),
        "NCLOUD_STORAGE": f"s3://{BUCKET}/root",
        "NCLOUD_AUTOSCALER_CONFIG": str(home / "autoscaler.yaml"),  # none: no growing
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    started: list[RayNode] = []
    api = free_port()
    srv = Server(home, env, f"http://127.0.0.1:{api}", "", "", {"api": api}, server.s3)
    env["NCLOUD_HOST"] = srv.api_url
    try:
        head = RayNode(folder, "head", env, cpus=0)
        started.append(head)
        nodes = {}
        for name in ("node-a", "node-b"):
            nodes[name] = RayNode(folder, name, env, head.address, head.dashboard_url)
            started.append(nodes[name])
        cluster = Cluster(srv, head, nodes, pg, folder / "digits", {}, started)
        srv.dashboard_url = head.dashboard_url
        srv.admin_token = _attach(srv, head.address)["admin_token"]
        make_digits(cluster.data, size=16)
        yield cluster
    finally:
        srv.stop()
        for node in started:  # and the nodes a test added: all told at once, then waited for
            node.terminate()
        for node in started:
            node.stop()
        pg.stop()


def _actor_nodes(c: Cluster, class_name: str) -> list[str]:
    from ray.util.state import list_actors

    alive = list_actors(
        address=c.head.dashboard_url,
        filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
        detail=True,
    )
    return sorted(str(a.node_id) for a in alive)


def test_a_tenant_over_2_gib_is_placed_on_the_worker_nodes(cluster: Cluster) -> None:
    admin = cluster.server.client()
    admin.tenants.add(TENANT, 2, 0, "3GiB")
    assert admin.tenants.show(TENANT)["memory"] == 3 * 2**30
    user = admin.users.add("ops@example.com", [TENANT])
    cluster.state["token"] = user["token"]
    client = cluster.server.client(token=user["token"], tenant=TENANT)
    found = wait_for(
        lambda: (r := client.resources.list())["state"] == "CREATED" and r, 120, "placed"
    )
    assert found["reserved"]["cpus"] == 2 and found["reserved"]["memory"] == 3 * 2**30


def test_upload_and_ingest_land_in_s3(cluster: Cluster) -> None:
    srv, token = cluster.server, cluster.state["token"]
    for split in ("train", "valid"):
        path = cluster.data / f"{split}.tsv"
        cluster.state[split] = upload_dataset(srv, path, split, token, TENANT)
    fs = srv.s3.fs()
    prefix = f"{BUCKET}/root/tenants/{TENANT}/datasets/{cluster.state['train']}"
    assert fs.exists(f"{prefix}/index.json") and fs.ls(f"{prefix}/shards")
    assert not (srv.home / "storage").exists()  # nothing on the head's disk


def test_s3_gone_mid_ingest_is_an_error_that_ingest_again_mends(cluster: Cluster) -> None:
    """S3 goes away a few dozen files into an ingest: the dataset is Error, saying S3 cannot
    be reached and how to try again, with no index written; with S3 back, `ncloud dataset
    ingest` finishes it."""
    srv, token = cluster.server, cluster.state["token"]
    client = srv.client(token=token, tenant=TENANT)
    created = client.datasets.create("flaky", (cluster.data / "valid.tsv").read_bytes(), "v.tsv")
    for name in created["needed"]:
        data = (cluster.data / name).read_bytes()
        client.datasets.put_file(created["id"], name, iter([data]), len(data))
    try:
        client.datasets.ingest(created["id"])
        srv.s3.proxy.cut_after(30_000)
        ended = ("Error", "Ready")
        failed = wait_for(
            lambda: (d := client.datasets.show(created["id"]))["status"] in ended and d,
            300,
            "the ingest to end",
        )
    finally:
        srv.s3.proxy.restore()
    assert failed["status"] == "Error", "the ingest finished before S3 was cut"
    said = str(failed["error"])  # where the cut lands decides which of the two it is
    assert "cannot reach S3 at" in said or "storage unreachable" in said, said
    assert "ncloud dataset ingest" in said, said
    fs = srv.s3.fs()
    prefix = f"{BUCKET}/root/tenants/{TENANT}/datasets/{created['id']}"
    assert not fs.exists(f"{prefix}/index.json")
    again = srv.cli("dataset", "ingest", str(created["id"]), "-o", "json", token=token,
                    tenant=TENANT)  # fmt: skip
    done = json.loads(again.stdout)
    assert done["status"] == "Ready" and done["rows"] == 357
    assert fs.exists(f"{prefix}/index.json")


def test_two_workers_train_one_on_each_worker_node(cluster: Cluster) -> None:
    client = cluster.server.client(token=cluster.state["token"], tenant=TENANT)
    model = client.models.train(
        "spread", "cnn.yaml", (ROOT / "examples/cnn.yaml").read_text(),
        cluster.state["train"], valid_dataset=cluster.state["valid"], epochs=2, workers=2,
    )  # fmt: skip
    found = wait_for(
        lambda: (m := client.models.show(model["id"]))["status"] in TERMINAL and m,
        420,
        "the two-worker run to end",
    )
    assert found["status"] == "Completed", found["error"]
    assert found["checkpoints"] == [1, 2] and found["epochs_done"] == 2
    workers = _actor_nodes(cluster, "TrainWorker")
    expected = sorted(n.node_id for n in cluster.nodes.values())
    assert workers == expected, "the two workers are not one on each worker node"
    files = client.models.results(model["id"])
    assert "model.pt" in files and any(name.startswith("checkpoints/") for name in files)
    assert cluster.server.s3.fs().ls(f"{BUCKET}/root/tenants/{TENANT}/models")
    cluster.state["model"] = model["id"]


def test_deploy_predict_and_a_batch(cluster: Cluster) -> None:
    srv = cluster.server
    client = srv.client(token=cluster.state["token"], tenant=TENANT)
    model_id = cluster.state["model"]
    dep = deployed(client, model_id)
    cluster.state["deploy_token"] = dep["token"]
    image = [("file", ("seven.png", png_image(16, 16, 200)))]
    reply = post(srv, model_id, dep["token"], files=image, params={"k": 3})
    assert reply.status_code == 200, reply.text
    top = reply.json()["predictions"][0]["top"]
    chances = [t["probability"] for t in top]
    assert len(top) == 3 and chances == sorted(chances, reverse=True) and sum(chances) <= 1.0001
    assert {"index", "label", "probability"} <= set(top[0])
    batch = client.batches.predict_dataset(model_id, cluster.state["valid"], k=2, fmt="csv")
    done = wait_for(
        lambda: (b := client.batches.show(batch["id"]))["status"] in TERMINAL and b,
        300,
        "the batch",
    )
    assert done["status"] == "Completed", done["error"]
    assert done["predicted"] == client.datasets.show(cluster.state["valid"])["rows"]


def test_the_control_plane_stops_and_starts_and_the_cluster_keeps_everything(
    cluster: Cluster,
) -> None:
    srv = cluster.server
    srv.stop()
    gone = srv.cli("info", check=False)
    assert gone.returncode == 1 and "cannot reach ncloud" in gone.stderr
    again = _attach(srv, cluster.head.address)
    assert again["admin_token"] is None  # the admin is in the PostgreSQL store already
    client = srv.client(token=cluster.state["token"], tenant=TENANT)
    model_id = cluster.state["model"]
    assert client.models.show(model_id)["status"] == "Completed"
    assert {d["id"] for d in client.datasets.list()} >= {cluster.state["train"]}
    wait_for(lambda: client.models.deployment(model_id)["status"] == "Deployed", 300, "Deployed")
    image = [("file", ("again.png", png_image(16, 16, 10)))]
    reply = wait_for(
        lambda: (
            (r := post(srv, model_id, cluster.state["deploy_token"], files=image)).status_code
            == 200
            and r
        ),
        120,
        "a prediction after the restart",
    )
    assert reply.json()["predictions"][0]["top"]


def test_a_worker_node_lost_mid_ingest_costs_only_time(cluster: Cluster) -> None:
    """The node running an ingest task dies (SIGKILL of its raylet and all); the tenant's
    bundle is placed again on a new node, Ray runs the task again there, and the dataset
    is Ready with every row: nothing half-written counts."""
    from ray.util.state import list_tasks

    srv = cluster.server
    client = srv.client(token=cluster.state["token"], tenant=TENANT)
    client.models.undeploy(cluster.state["model"])  # its replica is not what this is about
    manifest = cluster.data / "valid.tsv"
    created = client.datasets.create("far-ingest", manifest.read_bytes(), "valid.tsv")
    for name in created["needed"]:
        data = (cluster.data / name).read_bytes()
        client.datasets.put_file(created["id"], name, iter([data]), len(data))
    # S3 slows down, so the ingest takes long enough to be caught running: at 0.01 s a chunk
    # the state API missed it in 2 of 4 runs (its one task over in under a poll or two)
    srv.s3.proxy.slow(0.05)
    try:
        client.datasets.ingest(created["id"])

        def running() -> str | None:
            tasks = list_tasks(
                address=cluster.head.dashboard_url,
                filters=[("name", "=", "_ingest_part"), ("state", "=", "RUNNING")],
                detail=True,
            )
            if tasks:
                return str(tasks[0].node_id)
            shown = client.datasets.show(created["id"])  # ended before it was caught?
            return None if shown["status"].startswith("Ingesting") else f"ended: {shown}"

        where = wait_for(running, 120, "the ingest task to run")
        assert not where.startswith("ended"), where
        (lost,) = [n for n in cluster.nodes.values() if n.node_id == where]
        lost.kill()
    finally:
        srv.s3.proxy.restore()
    assert client.datasets.show(created["id"])["status"].startswith("Ingesting")
    cluster.join("node-c")
    found = wait_for(
        lambda: (d := client.datasets.show(created["id"]))["status"] in ("Ready", "Error") and d,
        300,
        "the ingest to end",
    )
    assert found["status"] == "Ready", found["error"]
    assert found["rows"] == client.datasets.show(cluster.state["valid"])["rows"]


@pytest.mark.timeout(600)
def test_the_database_gone_for_a_minute_under_writes_is_503s_then_recovery(
    cluster: Cluster,
) -> None:
    """A user creates volumes one after another while PostgreSQL stops for a minute: each
    request is answered at once (acknowledged, or a 503 naming the store), nothing hangs,
    and once it is back every acknowledged write is there and writes go on."""
    from ncloud.client import Client
    from ncloud.errors import NcloudError, Unavailable

    srv = cluster.server
    # a request still unanswered after 10 s is a hang here: the client gives up on it
    client = Client(srv.api_url, token=cluster.state["token"], tenant=TENANT, timeout=10)
    acknowledged: list[int] = []
    refused: list[NcloudError] = []

    def write(i: int) -> bool:
        """Whether volume w{i} was acknowledged (a request that hangs fails the test: its
        ReadTimeout is no NcloudError)."""
        try:
            acknowledged.append(client.volumes.create(f"w{i}")["id"])
            return True
        except NcloudError as exc:
            refused.append(exc)
            return False

    for i in range(5):
        write(i)
    cluster.pg.pause()
    try:
        gone_until, i = time.monotonic() + 60, 5
        while time.monotonic() < gone_until:
            write(i)
            i += 1
            time.sleep(0.2)
    finally:
        cluster.pg.resume()
    during = list(refused)
    assert during and all(isinstance(e, Unavailable) for e in during), during[:3]
    assert "cannot be used now" in during[0].message
    wait_for(lambda: write(len(acknowledged) + len(refused)), 60, "writes to go on")
    listed = {v["id"] for v in client.volumes.list()}
    client.close()
    assert set(acknowledged) <= listed, "an acknowledged write was lost"
