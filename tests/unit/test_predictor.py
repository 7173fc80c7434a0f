"""A trained model loaded for prediction (jobs.models.predictor), without Ray or Serve."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from examples.digits import make_digits
from jobs.datasets.ingest import ingest_local
from jobs.models import checkpoints
from jobs.models.predictor import Predictor, read_meta
from jobs.training.trainer import TrainConfig, train
from ncloud.errors import Conflict, InvalidInput
from ncloud.manifest import read_manifest
from tests.unit.test_trainer import MLP, Recorder


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("predict")
    make_digits(root / "files", size=8, holdout=10)
    ingest_local(read_manifest(str(root / "files" / "train.tsv")), str(root / "train"), 1 << 20)
    run = root / "run"
    cfg = TrainConfig(
        spec_name="mlp.yaml",
        spec_text=MLP,
        train_url=str(root / "train"),
        epochs=4,
        batch_size=64,
        run_url=str(run),
    )
    train(cfg, Recorder())
    return {"root": root, "run": str(run)}


def _png(path: Path) -> bytes:
    return path.read_bytes()


def test_top_k_is_sorted_labelled_and_mostly_right(trained: dict[str, Any]) -> None:
    p = Predictor(trained["run"], "mlp.yaml", MLP, tenant_id=1)
    files = trained["root"] / "files"
    rows = [line.split("\t") for line in (files / "holdout.tsv").read_text().splitlines()[1:]]
    decoded = [p.decode(name, (files / name).read_bytes()) for name, _ in rows]
    tops = p.top_k(p.probabilities(decoded), 3)
    assert all(len(t) == 3 for t in tops)
    for top in tops:
        probs = [e["probability"] for e in top]
        assert probs == sorted(probs, reverse=True) and all(e["label"] for e in top)
    right = sum(top[0]["label"] == label for top, (_, label) in zip(tops, rows, strict=True))
    assert right >= 7
    assert p.clamp_k(50) == 10


def test_other_sizes_and_colours_are_fitted_to_training_shape(trained: dict[str, Any]) -> None:
    p = Predictor(trained["run"], "mlp.yaml", MLP, tenant_id=1)
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(out, "PNG")
    x = p.decode("big.png", out.getvalue())
    assert x.shape == (8, 8, 1) and x.dtype.name == "uint8"


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("a.png", b"", "empty"),
        ("a.png", b"not an image", "a.png"),
        ("a.png", b"\x89PNG\r\n\x1a\n\x00\x00", "a.png"),
    ],
)
def test_bad_inputs_name_the_input(
    trained: dict[str, Any], name: str, data: bytes, match: str
) -> None:
    p = Predictor(trained["run"], "mlp.yaml", MLP, tenant_id=1)
    with pytest.raises(InvalidInput, match=match):
        p.decode(name, data)
    with pytest.raises(InvalidInput, match="k must be at least 1"):
        p.clamp_k(0)


def test_a_named_checkpoint_and_a_model_that_never_trained(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    first = checkpoints.list_checkpoints(trained["run"])[0]["epoch"]
    p = Predictor(trained["run"], "mlp.yaml", MLP, checkpoint=first, tenant_id=1)
    assert p.checkpoint == first
    assert read_meta(trained["run"])["classes"][0] == "eight"
    with pytest.raises(Conflict, match="not trained"):
        Predictor(str(tmp_path), "mlp.yaml", MLP, tenant_id=1)


def test_raw_outputs_are_probabilities(trained: dict[str, Any]) -> None:
    p = Predictor(trained["run"], "mlp.yaml", MLP, tenant_id=1)
    files = trained["root"] / "files"
    x = p.decode("h.png", (files / "holdout" / "0000.png").read_bytes())
    probs = p.probabilities([x])
    assert probs.shape == (1, 10) and torch.allclose(probs.sum(1), torch.ones(1))
    p.probe()
    assert json.dumps(p.top_k(probs, 1))


def test_async_forwards_answer_their_own_inputs_when_a_caller_gives_up(
    trained: dict[str, Any],
) -> None:
    """A coroutine cancelled while the sandbox computes (a client that hung up) must not
    leave its answer in the pipe for the next forward to take."""
    p = Predictor(trained["run"], "mlp.yaml", MLP, tenant_id=1)
    files = trained["root"] / "files"
    xs = [p.decode(f"{i}.png", (files / "holdout" / f"{i:04d}.png").read_bytes()) for i in range(6)]
    expected = p.probabilities(xs)

    async def cancelled_while_waiting() -> None:
        """Cancel a forward after it sent its input, before the answer came (a fast sandbox
        can answer before the check sees it waiting: then try again)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            gone = asyncio.ensure_future(p.probabilities_async(xs[:1]))
            while not p.network.lock.locked() and not gone.done():
                await asyncio.sleep(0)
            if not gone.done():
                gone.cancel()
                return
        raise AssertionError("no forward was ever seen waiting for its answer")

    async def scenario() -> list[torch.Tensor]:
        await cancelled_while_waiting()
        answers = await asyncio.gather(*[p.probabilities_async([x]) for x in xs[1:]])
        await p.probe_async()
        return [await p.probabilities_async(xs[:1]), *answers]

    got = torch.cat(asyncio.run(scenario()))
    assert torch.allclose(got, expected, atol=1e-5)
    p.close()
