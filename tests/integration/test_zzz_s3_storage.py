"""NCLOUD_STORAGE on a real S3 endpoint, and S3 failing in the middle of an ingest.

Runs last: it restarts the session's server with its storage in S3 (through the proxy).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from examples.digits import make_digits
from tests.integration.conftest import Server

STORE = "ncloud-store"


@pytest.fixture(scope="module")
def s3_server(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Server:
    server.s3.fs().mkdir(STORE)
    server.stop()
    server.env["NCLOUD_STORAGE"] = f"s3://{STORE}/root"
    server.start()
    return server


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits-s3-storage")
    make_digits(out, size=16)
    return out


def _wait_status(client, dataset_id: int, wanted: set[str], timeout_s: float = 300) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = client.datasets.show(dataset_id)
        if found["status"] in wanted:
            return found  # type: ignore[no-any-return]
        time.sleep(0.5)
    raise AssertionError(f"dataset {dataset_id} never reached {wanted}")


@pytest.mark.timeout(900)
def test_upload_to_s3_storage_and_survive_s3_outage(s3_server: Server, digits: Path) -> None:
    srv = s3_server
    srv.client().tenants.add("s3team", 1, 0, "256MiB")
    user = srv.client().users.add("sam@example.com", ["s3team"])
    fs = srv.s3.fs()
    try:
        out = srv.cli(
            "dataset",
            "upload",
            str(digits / "holdout.tsv"),
            "--name",
            "on-s3",
            "-o",
            "json",
            token=user["token"],
            tenant="s3team",
        )
        ready = json.loads(out.stdout)
        assert ready["status"] == "Ready" and ready["rows"] == 10
        prefix = f"{STORE}/root/tenants/s3team/datasets/{ready['id']}"
        assert fs.exists(f"{prefix}/index.json") and fs.ls(f"{prefix}/shards")
        assert not (srv.home / "storage" / "tenants" / "s3team").exists()

        client = srv.client(token=user["token"], tenant="s3team")
        manifest = (digits / "valid.tsv").read_bytes()
        created = client.datasets.create("flaky", manifest, "valid.tsv")
        for name in created["needed"]:
            data = (digits / name).read_bytes()
            client.datasets.put_file(created["id"], name, iter([data]), len(data))
        client.datasets.ingest(created["id"])
        srv.s3.proxy.cut_after(30_000)  # S3 goes away a few dozen files into the ingest
        failed = _wait_status(client, created["id"], {"Error", "Ready"})
        assert failed["status"] == "Error", "the ingest finished before S3 was cut"
        said = str(failed["error"])  # where the cut lands decides which of the two it is
        assert "cannot reach S3 at" in said or "storage unreachable" in said, said
        assert "ncloud dataset ingest" in said, said
        flaky = f"{STORE}/root/tenants/s3team/datasets/{created['id']}"
        assert not fs.exists(f"{flaky}/index.json")

        srv.s3.proxy.restore()
        retried = srv.cli(
            "dataset",
            "ingest",
            str(created["id"]),
            "-o",
            "json",
            token=user["token"],
            tenant="s3team",
        )
        done = json.loads(retried.stdout)
        assert done["status"] == "Ready" and done["rows"] == 357
        assert fs.exists(f"{flaky}/index.json")
    finally:
        srv.s3.proxy.restore()
        srv.client().users.remove("sam@example.com")
        srv.client().tenants.remove("s3team", force=True)
    assert not fs.exists(f"{STORE}/root/tenants/s3team")
