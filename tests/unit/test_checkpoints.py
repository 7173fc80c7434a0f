"""Checkpoints: state then index, atomically; pruning; corrupt ones are refused and skipped."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cluster.core import storage
from jobs.models import checkpoints
from ncloud.errors import InvalidInput, NotFound


def state(epoch: int) -> dict[str, Any]:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.nn.init.constant_(model.weight, float(epoch))
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": epoch,
        "rng": {"torch": torch.get_rng_state(), "note": ["a", 1, 2.5, None]},
    }


@pytest.fixture(params=["local", "memory"])
def run_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    return f"memory://ckpt-{uuid.uuid4().hex}/run"


def files(run_url: str) -> list[str]:
    fs, root = storage.filesystem(storage.join(run_url, "checkpoints"))
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(root))


def test_save_then_load_round_trips_with_weights_only(run_url: str) -> None:
    index = checkpoints.save(run_url, 1, state(1), {"train_loss": 0.5})
    assert index["epoch"] == 1 and index["file"] == "ckpt-0001.pt"
    assert index["metrics"] == {"train_loss": 0.5} and index["bytes"] > 0
    assert files(run_url) == ["ckpt-0001.json", "ckpt-0001.pt"]  # no temporary names left
    loaded = checkpoints.load(run_url, 1)
    assert torch.equal(loaded["model"]["weight"], torch.full((2, 3), 1.0))
    assert loaded["optimizer"]["state"][0]["step"] == 1 and loaded["rng"]["note"][2] == 2.5
    assert checkpoints.list_checkpoints(run_url) == [index]


def test_the_index_is_written_last(run_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    real = storage.write_stream

    def spy(url: str, chunks: Any, max_bytes: int) -> int:
        written.append(url.rsplit("/", 1)[-1])
        return real(url, chunks, max_bytes)

    monkeypatch.setattr(storage, "write_stream", spy)
    checkpoints.save(run_url, 2, state(2))
    assert written == ["ckpt-0002.pt", "ckpt-0002.json"]


def test_a_checkpoint_without_its_index_does_not_exist(
    run_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints.save(run_url, 1, state(1))
    real = storage.write_stream

    def crash_on_index(url: str, chunks: Any, max_bytes: int) -> int:
        if url.endswith(".json"):
            raise OSError("disk full")
        return real(url, chunks, max_bytes)

    monkeypatch.setattr(storage, "write_stream", crash_on_index)
    with pytest.raises(OSError):
        checkpoints.save(run_url, 2, state(2))
    assert [i["epoch"] for i in checkpoints.list_checkpoints(run_url)] == [1]
    with pytest.raises(NotFound):
        checkpoints.load(run_url, 2)
    latest = checkpoints.load_latest(run_url)
    assert latest is not None and latest[0] == 1


def test_prunes_to_keep_and_drops_a_left_history(run_url: str) -> None:
    for epoch in range(1, 6):
        checkpoints.save(run_url, epoch, state(epoch), keep=2)
    assert [i["epoch"] for i in checkpoints.list_checkpoints(run_url)] == [4, 5]
    assert files(run_url) == ["ckpt-0004.json", "ckpt-0004.pt", "ckpt-0005.json", "ckpt-0005.pt"]
    checkpoints.save(run_url, 4, state(4), keep=2)  # resumed from 4: 5 is another history
    assert [i["epoch"] for i in checkpoints.list_checkpoints(run_url)] == [4]
    with pytest.raises(InvalidInput, match="keep"):
        checkpoints.save(run_url, 6, state(6), keep=0)


def test_a_corrupt_latest_falls_back_to_the_one_before(
    run_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    for epoch in (1, 2, 3):
        checkpoints.save(run_url, epoch, state(epoch))
    fs, path = storage.filesystem(checkpoints.checkpoint_url(run_url, 3, "pt"))
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    with pytest.raises(InvalidInput, match=r"ckpt-0003\.pt is corrupt"):
        checkpoints.load(run_url, 3)
    with caplog.at_level(logging.WARNING, logger="jobs.models.checkpoints"):
        latest = checkpoints.load_latest(run_url)
    assert latest is not None and latest[0] == 2
    assert torch.equal(latest[1]["model"]["weight"], torch.full((2, 3), 2.0))
    assert "skipping checkpoint 3" in caplog.text
    said: list[str] = []
    assert checkpoints.load_latest(run_url, skipped=said.append) is not None
    assert len(said) == 1 and said[0].startswith("checkpoint 3 skipped: checkpoint ")
    assert "ckpt-0003.pt is corrupt" in said[0]
    # The trusted side's check, without unpickling: the same choice, the same reason.
    assert checkpoints.newest_intact(run_url) == (2, said)
    assert checkpoints.newest_intact(run_url, at_most=1) == (1, [])
    assert checkpoints.newest_intact(f"{run_url}-none") == (None, [])
    with pytest.raises(InvalidInput, match=r"ckpt-0003\.pt is corrupt"):
        checkpoints.intact(run_url, 3)
    at_most = checkpoints.load_latest(run_url, at_most=1)
    assert at_most is not None and at_most[0] == 1
    assert checkpoints.load_latest(f"{run_url}-none") is None


def test_only_plain_values_are_saved_and_pickles_are_refused(run_url: str) -> None:
    with pytest.raises(InvalidInput, match=r"state\['rng'\] is a ndarray"):
        checkpoints.save(run_url, 1, {"rng": np.zeros(3)})
    assert checkpoints.list_checkpoints(run_url) == []
    # A .pt whose index matches but that holds an arbitrary object: weights_only refuses it.
    buffer = io.BytesIO()
    torch.save({"x": Path("/etc")}, buffer)
    data = buffer.getvalue()
    storage.write_stream(checkpoints.checkpoint_url(run_url, 1, "pt"), [data], 1 << 30)
    index = {"epoch": 1, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    storage.write_stream(
        checkpoints.checkpoint_url(run_url, 1, "json"), [json.dumps(index).encode()], 1 << 20
    )
    with pytest.raises(InvalidInput, match=r"ckpt-0001\.pt is corrupt"):
        checkpoints.load(run_url, 1)
    assert checkpoints.load_latest(run_url) is None
