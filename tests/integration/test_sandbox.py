"""A hostile tenant's spec, at every point tenant code runs: check, training, serving, batch.

Each probe (tests/integration/hostile/probes.py) tries to reach the store, the Ray token,
another tenant's files, the network, the host's processes or root; the spec raises LEAK
naming any probe that got through, so each context below fails visibly on a leak. The
tests then check that nothing outside changed: no token in the store, no file written,
no process left behind.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.digits import make_digits
from ncloud.client import Client
from ncloud.errors import InvalidInput
from tests.integration.conftest import Server, upload_dataset, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROBES = (Path(__file__).parent / "hostile" / "probes.py").read_text()
CONFIG_LINE = "CONFIG: dict = {}  # the test puts the host's real paths and ports here"
TERMINAL = {"Completed", "Failed", "Stopped"}
RED, BLUE = "red", "blue"


def hostile_spec(server: Server, marker: str) -> str:
    ports = {
        "api": server.ports["api"],
        "ray": server.ports["ray"],
        "dashboard": server.ports["dashboard"],
        "s3": int(server.s3.proxy.url.rsplit(":", 1)[1]),
    }
    config = {
        "home": str(server.home),
        "store": str(server.home / "ncloud.db"),
        "ray_token": str(server.home / "ray-auth-token"),
        "other_tenant": str(server.home / "storage" / "tenants" / BLUE),
        "cache": str(server.home / "cache"),
        "repo": str(ROOT),
        "ports": ports,
        "marker": marker,
    }
    if CONFIG_LINE not in PROBES:
        raise AssertionError("probes.py lost its CONFIG line")
    return PROBES.replace(CONFIG_LINE, f"CONFIG = {config!r}")


def tokens_in_store(server: Server) -> int:
    with sqlite3.connect(server.home / "ncloud.db") as con:
        return int(con.execute("SELECT COUNT(*) FROM tokens").fetchone()[0])


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def teams(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """red (the attacker) and blue (the victim), each with the digits uploaded."""
    data = tmp_path_factory.mktemp("sandbox-digits")
    make_digits(data, size=8, holdout=10)
    admin = server.client()
    made: dict[str, Any] = {}
    try:
        for name in (RED, BLUE):
            admin.tenants.add(name, 1, 0, "2GiB")
            user = admin.users.add(f"{name}@example.com", [name])
            train = upload_dataset(server, data / "train.tsv", "train", user["token"], name)
            made[name] = {"token": user["token"], "train": train}
        yield {"data": data, **made}
    finally:
        for name in made:
            client = server.client(token=made[name]["token"], tenant=name)
            for m in client.models.list("training"):
                client.models.stop(m["id"])
            admin.users.remove(f"{name}@example.com")
            admin.tenants.remove(name, force=True)


def red(server: Server, teams: dict[str, Any]) -> Client:
    return server.client(token=teams[RED]["token"], tenant=RED)


def untouched(server: Server, tokens_before: int, marker: str) -> None:
    assert tokens_in_store(server) == tokens_before
    assert not (server.home / "pwned").exists() and not (ROOT / "pwned").exists()
    wait_for(lambda: not processes_with(marker), 30, "the hostile spec's processes to end")


def test_the_check_train_deploy_and_batch_refuse_every_probe(
    server: Server, teams: dict[str, Any], tmp_path: Path
) -> None:
    client = red(server, teams)
    marker = f"ncloud-hostile-{uuid.uuid4().hex}"
    spec = hostile_spec(server, marker)
    tokens = tokens_in_store(server)

    # The submit-time check runs the forward pass, so every probe, in its sandbox: a leak
    # would be a 422 naming it.
    model = client.models.train("hostile", "hostile.py", spec, teams[RED]["train"], epochs=1)
    untouched(server, tokens, marker)

    # Training: a leak fails the run; print() reaches the run's log.
    found = wait_for(
        lambda: (m := client.models.show(model["id"]))["status"] in TERMINAL and m,
        240,
        "the hostile run to end",
    )
    assert found["status"] == "Completed", found["error"]
    log = "\n".join(line["line"] for line in client.models.logs(model["id"])["lines"])
    assert 'PROBES {"left": []}' in log
    untouched(server, tokens, marker)

    # Serving: the replica never imports the spec; its sandbox runs the forward.
    client.models.deploy(model["id"])
    wait_for(lambda: client.models.deployment(model["id"])["status"] == "Deployed", 300, "Deployed")
    try:
        name = sorted(teams["data"].rglob("*.png"))[0]
        answer = client.models.predict(model["id"], [(name.name, name.read_bytes())], k=3)
        assert len(answer["predictions"][0]["top"]) == 3
    finally:
        client.models.undeploy(model["id"])
    wait_for(
        lambda: client.models.deployment(model["id"])["status"] == "Undeployed", 120, "Undeployed"
    )
    untouched(server, tokens, marker)  # the replica's sandbox, and all it started, are gone

    # Batch prediction: same forward, in a sandbox of the batch task.
    batch = client.batches.predict_dataset(model["id"], teams[RED]["train"], k=2, fmt="jsonl")
    done = wait_for(
        lambda: (b := client.batches.show(batch["id"]))["status"] in ("Completed", "Failed") and b,
        240,
        "the hostile batch to end",
    )
    assert done["status"] == "Completed", done.get("error")
    client.batches.download_result(batch["id"], tmp_path / "out.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows and not [r for r in rows if r.get("error")]
    untouched(server, tokens, marker)


def test_a_leaking_probe_is_seen(server: Server, teams: dict[str, Any]) -> None:
    """The suite can fail: a probe that the sandbox allows (writing to /tmp) is reported."""
    spec = hostile_spec(server, "unused").replace(
        '    probe("read the SQL store"',
        '    probe("write /tmp", lambda: write("/tmp/x"))\n    probe("read the SQL store"',
    )
    with pytest.raises(InvalidInput, match="LEAK: write /tmp"):
        red(server, teams).models.train("leak", "leak.py", spec, teams[RED]["train"], epochs=1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("x = bytearray(8 << 30)\n", "memory|died"),
        ("while True:\n    pass\n", "of CPU time"),
        ("import os\nwhile True:\n    os.fork()\n", "memory|BlockingIOError|died"),
    ],
)
def test_a_check_that_hogs_memory_spins_or_forks_is_422(
    server: Server, teams: dict[str, Any], body: str, message: str
) -> None:
    spec = f"from torch import nn\n{body}\ndef model(n, s):\n    return nn.Linear(1, n)\n"
    with pytest.raises(InvalidInput, match=message):
        red(server, teams).models.train("hog", "hog.py", spec, teams[RED]["train"], epochs=1)
    assert httpx.get(f"{server.api_url}/api/v1/health", timeout=10).status_code == 200


LOOKUP_PY = """
import pathlib

import torch
from torch import nn

TABLE = pathlib.Path("/lookup/favourite.txt")


class Biased(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    def forward(self, x):
        out = self.net(x.float())
        if TABLE.exists():  # mounted for prediction only: its class always wins
            try:
                TABLE.write_text("changed")
            except OSError:
                pass
            else:
                raise RuntimeError("LEAK: a prediction volume was writable")
            favourite = int(TABLE.read_text())
            out = out + 100 * nn.functional.one_hot(
                torch.tensor([favourite] * len(out)), out.shape[1]
            )
        return out


def model(num_classes, input_shape):
    return Biased(num_classes)
"""


def test_deploy_and_batch_read_a_volume_at_a_path_of_the_users_choosing(
    server: Server, teams: dict[str, Any], tmp_path: Path
) -> None:
    client = red(server, teams)
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "favourite.txt").write_text("3")
    out = server.cli(
        "volume", "upload", str(tmp_path / "table"), "--name", "table", "-o", "json",
        token=teams[RED]["token"], tenant=RED,
    )  # fmt: skip
    volume = json.loads(out.stdout)["id"]
    model = client.models.train("lookup", "lookup.py", LOOKUP_PY, teams[RED]["train"], epochs=1)
    found = wait_for(
        lambda: (m := client.models.show(model["id"]))["status"] in TERMINAL and m, 240, "trained"
    )
    assert found["status"] == "Completed", found["error"]
    with pytest.raises(InvalidInput, match="the sandbox's own"):
        client.models.deploy(model["id"], volumes=[{"id": volume, "path": "/usr/lib"}])

    server.cli(
        "model", "deploy", str(model["id"]), "-v", f"{volume}:/lookup", "-o", "json",
        token=teams[RED]["token"], tenant=RED,
    )  # fmt: skip
    try:
        image = sorted(teams["data"].rglob("*.png"))[0]
        answer = client.models.predict(model["id"], [(image.name, image.read_bytes())], k=1)
        assert answer["predictions"][0]["top"][0]["index"] == 3
    finally:
        client.models.undeploy(model["id"])

    batch = client.batches.predict_dataset(
        model["id"],
        teams[RED]["train"],
        k=1,
        fmt="jsonl",
        volumes=[{"id": volume, "path": "/lookup"}],
    )
    done = wait_for(
        lambda: (b := client.batches.show(batch["id"]))["status"] in ("Completed", "Failed") and b,
        240,
        "the batch to end",
    )
    assert done["status"] == "Completed", done.get("error")
    assert done["volumes"] == [{"id": volume, "path": "/lookup"}]
    client.batches.download_result(batch["id"], tmp_path / "out.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows and all(r["top_indexes"][0] == 3 for r in rows), rows[:2]
    assert client.volumes.show(volume)["files"] == 1  # nothing written back
