"""Batch prediction without Ray: the table, result files, slices, and bad rows on a real model."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cluster.control import schema
from cluster.core import accounts
from cluster.core.store import Store
from examples.digits import make_digits
from jobs.batches import predict as batch_predict
from jobs.batches import results as batch_results
from jobs.batches import state as batches
from jobs.batches.predict import Job
from jobs.batches.state import BatchStatus
from jobs.datasets.ingest import ingest_local
from jobs.models import predictor
from jobs.training.trainer import TrainConfig, train
from ncloud.cli import common
from ncloud.cli.main import app
from ncloud.client import Client
from ncloud.errors import Conflict, InvalidInput, NotFound, UsageError
from ncloud.manifest import parse_manifest, read_manifest
from tests.unit.test_trainer import MLP, Recorder

# -- the table -------------------------------------------------------------------------------


def test_batch_statuses_move_only_forward(store: Store) -> None:
    accounts.create_tenant(store, "vision", 1, 0, 0)
    over_dataset = batches.create(store, "vision", 3, 5, "csv", 100, dataset_id=9)
    assert over_dataset.status is BatchStatus.QUEUED and over_dataset.rows == 100
    over_manifest = batches.create(store, "vision", 3, 2, "jsonl", 7, manifest_name="new.tsv")
    assert over_manifest.status is BatchStatus.UPLOADING
    assert over_manifest.result_url.endswith(f"/batches/{over_manifest.id}/result.jsonl")
    with pytest.raises(Conflict, match="Uploading; it cannot become Running"):
        batches.move(store, "vision", over_manifest.id, BatchStatus.RUNNING)
    batches.move(store, "vision", over_dataset.id, BatchStatus.RUNNING)
    batches.progress(store, over_dataset.id, 60, 2)
    done = batches.move(store, "vision", over_dataset.id, BatchStatus.COMPLETED, result="r")
    assert done.status.is_terminal() and (done.predicted, done.bad_rows) == (60, 2)
    with pytest.raises(Conflict):
        batches.move(store, "vision", over_dataset.id, BatchStatus.QUEUED)
    assert [b.id for b in batches.list_all(store, "vision")] == [over_manifest.id, over_dataset.id]
    assert batches.in_status(store, {BatchStatus.UPLOADING}) == [("vision", over_manifest.id)]


def test_batches_belong_to_one_tenant_and_go_with_it(store: Store) -> None:
    accounts.create_tenant(store, "vision", 1, 0, 0)
    accounts.create_tenant(store, "audio", 1, 0, 0)
    mine = batches.create(store, "vision", 3, 5, "csv", 10, dataset_id=1)
    with pytest.raises(NotFound, match="no batch prediction"):
        batches.get(store, "audio", mine.id)
    assert batches.list_all(store, "audio") == []
    schema.delete_tenant(store, "vision", force=True)
    assert batches.in_status(store, set(BatchStatus)) == []


@pytest.mark.parametrize(
    ("k", "fmt", "message"),
    [(0, "csv", "k must be between 1"), (5, "xml", "format must be one of csv, jsonl")],
)
def test_bad_options_write_nothing(store: Store, k: int, fmt: str, message: str) -> None:
    accounts.create_tenant(store, "vision", 1, 0, 0)
    with pytest.raises(InvalidInput, match=message):
        batches.create(store, "vision", 3, k, fmt, 10, dataset_id=1)
    with pytest.raises(InvalidInput, match="exactly one"):
        batches.create(store, "vision", 3, 5, "csv", 10)
    assert batches.list_all(store, "vision") == []


# -- result files and slices -----------------------------------------------------------------


def _top(*pairs: tuple[int, float]) -> list[dict[str, Any]]:
    return [{"index": i, "label": f"c{i}", "probability": p} for i, p in pairs]


def test_results_as_csv_and_jsonl_keep_every_row_in_order() -> None:
    rows = [
        batch_results.predicted_row(i, i + 2, _top((i % 3, 0.75), (9, 0.25)), "c1")
        for i in range(2500)
    ]
    rows.insert(1, batch_results.bad_row("img/x.png", 4, "manifest line 4: broken, truly"))
    text = b"".join(batch_results.encode(rows, "csv")).decode()
    assert text.splitlines()[0] == ",".join(batch_results.COLUMNS)
    back = batch_results.read_csv(text)
    assert len(back) == 2501 and back[0]["top_indexes"] == [0, 9]
    assert back[0]["top_labels"] == ["c0", "c9"] and back[0]["top_probabilities"] == [0.75, 0.25]
    assert back[1]["error"] == "manifest line 4: broken, truly" and back[1]["top_indexes"] == []
    assert [r["id"] for r in back[2:5]] == ["1", "2", "3"]
    lines = b"".join(batch_results.encode(rows, "jsonl")).decode().splitlines()
    assert len(lines) == 2501 and json.loads(lines[1])["top_labels"] == []
    assert json.loads(lines[2]) == {**rows[2], "top_labels": ["c1", "c9"]}


def test_unnamed_classes_are_labelled_by_their_index() -> None:
    top = [{"index": 4, "label": None, "probability": 1.0}]
    assert batch_results.predicted_row(0, 1, top, None)["top_labels"] == ["4"]


def test_dataset_slices_are_whole_shards_covering_every_row() -> None:
    assert batch_predict.dataset_slices([3000, 3000, 500, 4096], 4096) == [
        (0, 6000),
        (6000, 10596),
    ]
    assert batch_predict.dataset_slices([10], 4096) == [(0, 10)]
    assert batch_predict.dataset_slices([], 4096) == []
    assert batch_predict.row_slices(2500, 1000) == [(0, 1000), (1000, 2000), (2000, 2500)]


@pytest.mark.parametrize(
    ("text", "kind", "columns", "label"),
    [
        ("@FILE\n1.png\n", "image", 0, None),
        ("@FILE\t@STRING\n1.png\tcat\n", "image", 0, 1),
        ("@ASCII_FLOAT\t@ASCII_FLOAT\n1\t2\n", "features", (0, 1), None),
        ("@ASCII_FLOAT\t@ASCII_INT\n1\t2\n", "features", (0,), 1),
        ("text,label\nhello there,greeting\n", "text", 0, 1),
    ],
)
def test_manifest_input_finds_the_input_and_label(
    text: str, kind: str, columns: Any, label: int | None
) -> None:
    found = batch_predict.manifest_input(parse_manifest(text, "/r"), kind)
    assert (found.columns, found.label) == (columns, label)


def test_manifest_of_another_kind_than_the_model_is_refused() -> None:
    with pytest.raises(InvalidInput, match="feature vectors, but the model takes image"):
        batch_predict.manifest_input(parse_manifest("@ASCII_FLOAT\n1\n", "/r"), "image")
    with pytest.raises(InvalidInput, match="inline text, but the model takes image"):
        batch_predict.manifest_input(parse_manifest("text\nhi\n", "/r"), "image")


def test_a_dataset_of_another_shape_is_refused() -> None:
    meta = {"kind": "image", "dataset_shape": [8, 8, 1], "transform": {}}
    batch_predict.check_dataset(meta, {"kind": "image", "shape": [8, 8, 1]})
    with pytest.raises(InvalidInput, match="holds text, but the model takes image"):
        batch_predict.check_dataset(meta, {"kind": "text", "shape": None})
    with pytest.raises(InvalidInput, match="shape \\[16, 16, 1\\]"):
        batch_predict.check_dataset(meta, {"kind": "image", "shape": [16, 16, 1]})
    resizing = {**meta, "transform": {"resize": [8, 8]}}
    batch_predict.check_dataset(resizing, {"kind": "image", "shape": [16, 16, 1]})


# -- a real (tiny) trained model -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("batch-digits")
    make_digits(root / "files", size=8, holdout=20)
    urls = {}
    for split in ("train", "valid"):
        urls[split] = str(root / split)
        ingest_local(read_manifest(str(root / "files" / f"{split}.tsv")), urls[split], 1 << 20)
    model = root / "model"
    cfg = TrainConfig("mlp.yaml", MLP, urls["train"], urls["valid"], epochs=3, run_url=str(model))
    train(cfg, Recorder())
    job = Job(
        str(model), "mlp.yaml", MLP, predictor.pinned_checkpoint(str(model)), k=3, tenant_id=1
    )
    return {"root": root, "job": job, **urls}


def same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Equal rows, up to float rounding (a forward pass of another batch size)."""
    exact = [{**r, "top_probabilities": None} for r in a] == [
        {**r, "top_probabilities": None} for r in b
    ]
    probs = [p for r in a for p in r["top_probabilities"]]
    return exact and probs == pytest.approx([p for r in b for p in r["top_probabilities"]])


def test_a_dataset_in_slices_is_predicted_once_per_row_in_order(trained: dict[str, Any]) -> None:
    job = dataclasses.replace(trained["job"], dataset_url=trained["valid"])
    whole = batch_predict.predict_slice(job, 0, None)
    halves = batch_predict.predict_slice(job, 0, 100) + batch_predict.predict_slice(job, 100, None)
    assert same_rows(halves, whole) and [r["id"] for r in whole] == list(range(len(whole)))
    assert all(len(r["top_indexes"]) == 3 and r["error"] is None for r in whole)
    accuracy = sum(r["top_labels"][0] == r["label"] for r in whole) / len(whole)
    assert accuracy > 0.8
    manifest = (trained["root"] / "files" / "valid.tsv").read_text().splitlines()
    first = whole[0]
    assert manifest[first["line"] - 1].split("\t")[1] == first["label"]  # the row's own line


def test_bad_manifest_rows_are_reported_and_the_rest_predicted(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    files = trained["root"] / "files"
    inputs = tmp_path / "inputs"
    shutil.copytree(files / "holdout", inputs / "holdout")
    good = sorted(p.name for p in (inputs / "holdout").iterdir())[:6]
    png = (inputs / "holdout" / good[0]).read_bytes()
    (inputs / "corrupt.png").write_bytes(png[: len(png) // 2])
    (inputs / "text.png").write_text("not an image at all")
    (inputs / "note.txt").write_text("a text file")
    rows = [f"holdout/{n}" for n in good[:3]]
    rows += ["corrupt.png", "missing.png", "text.png", "note.txt"]
    rows += [f"holdout/{n}" for n in good[3:]]
    (tmp_path / "manifest").write_text("@FILE\n" + "\n".join(rows) + "\n")
    manifest = parse_manifest((tmp_path / "manifest").read_bytes(), str(inputs))
    job = dataclasses.replace(trained["job"], manifest=manifest)
    found = batch_predict.predict_slice(job, 0, None)
    assert [r["id"] for r in found] == rows and [r["line"] for r in found] == list(range(2, 12))
    errors = {r["id"]: r["error"] for r in found if r["error"]}
    assert set(errors) == {"corrupt.png", "missing.png", "text.png", "note.txt"}
    assert "manifest line 5: " in errors["corrupt.png"] and "corrupt" in errors["corrupt.png"]
    assert "was not uploaded" in errors["missing.png"]
    assert "not a JPEG or PNG" in errors["text.png"]
    assert "is not an image file" in errors["note.txt"]
    predicted = [r for r in found if not r["error"]]
    assert len(predicted) == 6 and all(len(r["top_indexes"]) == 3 for r in predicted)
    for r in predicted:
        probs = r["top_probabilities"]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    later = batch_predict.predict_slice(job, 7, None)
    assert same_rows(later, found[7:])


def test_a_model_without_weights_has_nothing_to_pin(tmp_path: Path) -> None:
    with pytest.raises(Conflict, match="no weights yet"):
        predictor.pinned_checkpoint(str(tmp_path / "never-trained"))


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    seen: list[httpx.Request] = []
    batch = {"id": 4, "model": 3, "dataset": 9, "manifest": None, "format": "jsonl", "k": 2}
    batch |= {"status": "Completed", "rows": 2, "predicted": 2, "bad_rows": 0, "error": None}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/batches/4/result"):
            return httpx.Response(200, content=b'{"id": 0}\n{"id": 1}\n')
        return httpx.Response(201 if request.method == "POST" else 200, json=batch)

    monkeypatch.setattr(
        common,
        "client",
        lambda: Client("http://api.test", token="t", transport=httpx.MockTransport(handler)),
    )
    return seen


def test_cli_predicts_over_a_dataset_and_downloads_the_result(
    fake_api: list[httpx.Request], tmp_path: Path
) -> None:
    runner = CliRunner()
    out = runner.invoke(
        app,
        ["batch", "predict", "3", "--dataset", "9", "-k", "2", "--format", "jsonl", "-o", "json"],
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["status"] == "Completed"
    body = json.loads(fake_api[0].content)
    assert body == {"model": 3, "dataset": 9, "k": 2, "format": "jsonl"}
    out = runner.invoke(app, ["batch", "results", "4", "-d", str(tmp_path), "-o", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["path"] == str(tmp_path / "batch-4.jsonl")
    assert (tmp_path / "batch-4.jsonl").read_text().count("\n") == 2


def test_cli_needs_exactly_one_input(fake_api: list[httpx.Request]) -> None:
    out = CliRunner().invoke(app, ["batch", "predict", "3"])
    assert isinstance(out.exception, UsageError) and fake_api == []
