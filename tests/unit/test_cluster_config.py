"""cluster.yaml, read the way `ray up` reads it: Ray's own defaults and schema, then what a
working ncloud cluster needs of it (README: Running on a cluster)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config() -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    filled: dict[str, Any] = prepare_config(raw)
    validate_config(filled)  # Ray's schema: raises on a key it does not know
    return filled


def _requires_python() -> str:
    found = re.search(r'requires-python = ">=([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert found
    return found.group(1)


def test_ray_accepts_it(config: dict[str, Any]) -> None:
    assert config["provider"]["type"] == "aws"
    assert set(config["available_node_types"]) == {"head", "gpu_worker"}


def test_every_node_installs_what_it_runs(config: dict[str, Any]) -> None:
    setup = " ".join(config["setup_commands"])
    # These replace Ray's defaults: the autoscaler on the head needs boto3 from them.
    assert "boto3" in setup
    assert f"--python {_requires_python()}" in setup  # the image's own Python is older
    assert "'.[postgres]'" in setup  # the store's driver
    assert "-c constraints.txt" in setup


def test_the_local_venv_is_not_copied(config: dict[str, Any]) -> None:
    assert "." in config["file_mounts"].values()
    assert ".venv" in config["rsync_exclude"]


def test_only_the_api_port_is_opened_beyond_ray_defaults(config: dict[str, Any]) -> None:
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(8000, 8000)]
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start  # the dashboard stays on the head
    assert "ncloud server start --address 127.0.0.1:6379 --host 0.0.0.0 --port 8000" in start


def test_gpu_workers_can_reach_s3(config: dict[str, Any]) -> None:
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["IamInstanceProfile"]["Name"]
    assert worker["resources"]["GPU"] >= 1
    storage = " ".join(config["worker_setup_commands"])
    assert "NCLOUD_STORAGE=s3://" in storage
