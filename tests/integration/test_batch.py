"""Batch prediction on the local cluster: over a dataset, over a new manifest with bad rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.digits import make_digits
from jobs.batches.results import read_csv
from ncloud.client import Client
from ncloud.errors import Conflict, InvalidInput, NotFound
from tests.integration.conftest import Server, kill_controller, wait_for

ROOT = Path(__file__).resolve().parents[2]
TENANT = "batchers"
TERMINAL = {"Completed", "Failed", "Stopped"}


@pytest.fixture(scope="module")
def bench(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A one-CPU tenant with the digits uploaded, a model trained on them, one never trained."""
    data = tmp_path_factory.mktemp("batch-digits")
    make_digits(data, size=8, holdout=10)
    admin = server.client()
    admin.tenants.add(TENANT, 1, 0, "1GiB")
    user = admin.users.add("bea@example.com", [TENANT])
    client = server.client(token=user["token"], tenant=TENANT)
    try:
        ids = {}
        for split in ("train", "valid"):
            out = server.cli(
                "dataset", "upload", str(data / f"{split}.tsv"), "--name", split, "-o", "json",
                token=user["token"], tenant=TENANT, timeout=300,
            )  # fmt: skip
            ids[split] = json.loads(out.stdout)["id"]
        mlp = (ROOT / "examples/mlp.yaml").read_text()
        model = client.models.train("m", "mlp.yaml", mlp, ids["train"], epochs=5)
        # Queued behind "m" on the tenant's one bundle, and stopped before it ever runs.
        idle = client.models.train("idle", "mlp.yaml", mlp, ids["train"], epochs=1)
        client.models.stop(idle["id"])
        found = wait_for(
            lambda: (m := client.models.show(model["id"]))["status"] in TERMINAL and m,
            240,
            "model m to train",
        )
        assert found["status"] == "Completed", found["error"]
        assert client.models.show(idle["id"])["status"] == "Stopped"
        yield {
            "token": user["token"], "data": data, "model": model["id"], "idle": idle["id"], **ids,
        }  # fmt: skip
    finally:
        for m in client.models.list("training"):
            client.models.stop(m["id"])
        admin.users.remove("bea@example.com")
        admin.tenants.remove(TENANT, force=True)


def as_user(server: Server, bench: dict[str, Any]) -> Client:
    return server.client(token=bench["token"], tenant=TENANT)


def finished(client: Client, batch_id: int) -> Any:
    return wait_for(
        lambda: (b := client.batches.show(batch_id))["status"] in ("Completed", "Failed") and b,
        120,
        f"batch {batch_id} to finish",
    )


def test_a_batch_over_a_dataset_predicts_every_row(
    server: Server, bench: dict[str, Any], tmp_path: Path
) -> None:
    client = as_user(server, bench)
    created = client.batches.predict_dataset(bench["model"], bench["valid"], k=3, fmt="csv")
    assert created["status"] in ("Queued", "Running", "Completed")
    done = finished(client, created["id"])
    assert done["status"] == "Completed", done["error"]
    rows_in_dataset = client.datasets.show(bench["valid"])["rows"]
    assert done["rows"] == done["predicted"] == rows_in_dataset and done["bad_rows"] == 0
    client.batches.download_result(created["id"], tmp_path / "result.csv")
    rows = read_csv((tmp_path / "result.csv").read_text())
    assert [int(r["id"]) for r in rows] == list(range(rows_in_dataset))
    assert all(len(r["top_indexes"]) == 3 and not r["error"] for r in rows)
    assert sorted(r["line"] for r in rows) == list(range(2, rows_in_dataset + 2))
    accuracy = sum(r["top_labels"][0] == r["label"] for r in rows) / len(rows)
    assert accuracy > 0.8
    assert created["id"] in [b["id"] for b in client.batches.list()]
    # The same through the CLI: batch predict --dataset, then batch show.
    out = server.cli(
        "batch", "predict", str(bench["model"]), "--dataset", str(bench["valid"]), "-k", "3",
        "-o", "json", token=bench["token"], tenant=TENANT,
    )  # fmt: skip
    again = json.loads(out.stdout)
    assert again["status"] == "Completed" and again["predicted"] == rows_in_dataset
    shown = server.cli(
        "batch", "show", str(again["id"]), "-o", "json", token=bench["token"], tenant=TENANT
    )
    assert json.loads(shown.stdout)["rows"] == rows_in_dataset


def test_a_new_manifest_with_bad_rows_via_the_cli(
    server: Server, bench: dict[str, Any], tmp_path: Path
) -> None:
    data: Path = bench["data"]
    holdout = sorted(p.relative_to(data).as_posix() for p in (data / "holdout").glob("*.png"))
    png = (data / holdout[0]).read_bytes()
    (data / "corrupt.png").write_bytes(png[: len(png) // 2])
    (data / "words.png").write_text("this is text, not a picture")
    names = [*holdout[:4], "corrupt.png", "words.png", *holdout[4:]]
    manifest = data / "new.tsv"
    manifest.write_text("@FILE\n" + "\n".join(names) + "\n")
    out = server.cli(
        "batch", "predict", str(bench["model"]), "--manifest", str(manifest), "-k", "2",
        "--format", "jsonl", "-o", "json", token=bench["token"], tenant=TENANT,
    )  # fmt: skip
    done = json.loads(out.stdout)
    assert done["status"] == "Completed", done["error"]
    assert (done["rows"], done["bad_rows"], done["predicted"]) == (len(names), 2, len(names) - 2)
    assert "next: ncloud batch show" in out.stderr
    server.cli(
        "batch", "results", str(done["id"]), "-d", str(tmp_path), token=bench["token"],
        tenant=TENANT,
    )  # fmt: skip
    lines = (tmp_path / f"batch-{done['id']}.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == names
    errors = {r["id"]: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"corrupt.png", "words.png"}
    assert errors["corrupt.png"].startswith("manifest line 6: ")
    assert "not a JPEG or PNG" in errors["words.png"]
    assert all(len(r["top_labels"]) == 2 for r in rows if not r["error"])
    listed = server.cli("batch", "ls", "-o", "json", token=bench["token"], tenant=TENANT)
    assert done["id"] in [b["id"] for b in json.loads(listed.stdout)]


def test_bad_requests_write_nothing(
    server: Server, bench: dict[str, Any], tenant: Any, tmp_path: Path
) -> None:
    client = as_user(server, bench)
    before = client.batches.list()
    with pytest.raises(InvalidInput, match="k must be between 1"):
        client.batches.predict_dataset(bench["model"], bench["valid"], k=0)
    with pytest.raises(InvalidInput, match="format must be one of"):
        client.batches.predict_dataset(bench["model"], bench["valid"], fmt="xml")
    with pytest.raises(Conflict, match="has not trained yet"):
        client.batches.predict_dataset(bench["idle"], bench["valid"])
    with pytest.raises(Conflict, match="has not trained yet"):
        client.batches.create_upload(bench["idle"], b"@FILE\na.png\n")
    with pytest.raises(InvalidInput, match="feature vectors, but the model takes image"):
        client.batches.create_upload(bench["model"], b"@ASCII_FLOAT\n0.5\n")
    with pytest.raises(NotFound):
        client.batches.predict_dataset(99999, bench["valid"])
    assert client.batches.list() == before

    mine = client.batches.create_upload(bench["model"], b"@FILE\na.png\n")
    assert mine["status"] == "Uploading" and mine["needed"] == ["a.png"]
    tenant("batchers-b")
    other = server.client().users.add("otto@example.com", ["batchers-b"])
    try:
        outsider = server.client(token=other["token"], tenant="batchers-b")
        with pytest.raises(NotFound):
            outsider.batches.show(mine["id"])
        with pytest.raises(NotFound):
            outsider.batches.download_result(mine["id"], tmp_path / "x")
        with pytest.raises(NotFound):
            outsider.batches.predict_dataset(bench["model"], bench["valid"])
    finally:
        server.client().users.remove("otto@example.com")


def test_a_batch_a_dead_controller_left_queued_runs_on_the_next_one(
    server: Server, bench: dict[str, Any]
) -> None:
    """The API recorded the batch, and the controller died before it started the batch."""
    from cluster.core.store import open_store
    from jobs.batches import state as batches

    client = as_user(server, bench)
    rows = client.datasets.show(bench["valid"])["rows"]
    store = open_store(f"sqlite:///{server.home / 'ncloud.db'}")
    try:
        left = batches.create(store, TENANT, bench["model"], 2, "jsonl", rows, bench["valid"])
    finally:
        store.dispose()
    assert client.batches.show(left.id)["status"] == "Queued"  # nothing starts it here
    kill_controller(server)
    done = wait_for(
        lambda: (b := client.batches.show(left.id))["status"] in ("Completed", "Failed") and b,
        180,
        "the next controller to run the batch",
    )
    assert done["status"] == "Completed", done["error"]
    assert done["predicted"] == rows and done["bad_rows"] == 0
