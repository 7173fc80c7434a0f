"""The training options, declared once in ncloud.bodies: the CLI, the client, the stored
options and `python -m jobs.training` agree with that declaration."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import typer

from jobs.models.options import TrainOptions
from jobs.training.__main__ import _parser
from ncloud.bodies import TrainRequest, default, describe
from ncloud.cli.main import app
from ncloud.client import Client

# what the CLI takes another way: the spec file and --dataset train:ID[,valid:ID], -v ID:PATH
NOT_FLAGS = {"name", "spec_name", "spec_text", "train_dataset", "valid_dataset", "volume"}


def _train_command() -> Any:
    model = typer.main.get_command(app).commands["model"]  # type: ignore[attr-defined]
    return model.commands["train"]


def test_each_training_option_is_a_cli_flag_with_the_declared_default_and_help() -> None:
    flags = {p.opts[0].lstrip("-").replace("-", "_"): p for p in _train_command().params}
    options = set(TrainRequest.model_fields) - NOT_FLAGS - {"volumes"}
    assert options <= set(flags), sorted(options - set(flags))
    for name in options:
        assert flags[name].default == default(name), name
        assert flags[name].help == describe(name) != "", name
    assert "volume" in flags  # -v ID[:PATH], repeatable: TrainRequest.volumes


def test_the_stored_options_default_to_what_the_request_declares() -> None:
    for f in dataclasses.fields(TrainOptions):
        if f.default is not dataclasses.MISSING and f.name != "volumes":
            assert f.default == default(f.name), f.name


def test_ray_job_submit_takes_the_same_defaults() -> None:
    args = _parser().parse_args(["--spec", "s.yaml", "--manifest", "m.tsv"])
    for name in ("validation_percent", "gpus", "seed", "epochs", "batch_size"):
        assert getattr(args, name) == default(name), name


def test_the_client_refuses_an_option_the_api_does_not_take() -> None:
    # no server listens here: the call must fail before it sends anything
    with Client("http://127.0.0.1:9", token="t") as c, pytest.raises(TypeError, match="epoch"):
        c.models.train("m", "s.yaml", "layers: []", 1, epoch=3)
