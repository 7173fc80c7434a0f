"""What the training tests share: a network that is slow (and bad) on cue, and waits on runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ncloud.client import Client
from tests.integration.conftest import Server, wait_for

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"Completed", "Failed", "Stopped"}

# A .py network that is slow on purpose (so tests can act mid-run) and can misbehave on cue.
SLOW_PY = """
import time
import torch
from torch import nn

MODE = "{mode}"
HOG = []


class Net(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    def forward(self, x):
        if self.training:
            time.sleep({sleep})
            if MODE == "raise":
                raise RuntimeError("boom in user code")
            if MODE == "hog":
                HOG.append(torch.ones(64 << 20, dtype=torch.uint8))
        return self.body(x)


def model(num_classes, input_shape):
    return Net(num_classes, input_shape)
"""


def slow_py(mode: str = "ok", sleep: float = 0.02) -> str:
    return SLOW_PY.format(mode=mode, sleep=sleep)


def as_user(server: Server, lab: dict[str, Any]) -> Client:
    return server.client(token=lab["token"], tenant=lab["tenant"])


def until(client: Client, model_id: int, statuses: set[str], timeout_s: float = 240) -> Any:
    return wait_for(
        lambda: (m := client.models.show(model_id))["status"] in statuses and m,
        timeout_s,
        f"model {model_id} to become {statuses}",
    )


def submit(client: Client, lab: dict[str, Any], name: str, text: str, **options: Any) -> Any:
    spec_name = options.pop("spec_name", "net.py")
    return client.models.train(name, spec_name, text, lab["train"], **options)


def running_pid(client: Client, model_id: int) -> int:
    history = client.models.show(model_id)["runs"][-1]["history"]
    return int([h for h in history if h["status"] == "Running"][-1]["note"].split()[-1])


def worker_actor_pid(server: Server, child: int) -> int:
    """The pid of the pool worker actor that a training child runs under."""
    from ray.util.state import list_actors

    alive = list_actors(
        address=server.dashboard_url,
        filters=[("class_name", "=", "TrainWorker"), ("state", "=", "ALIVE")],
    )
    workers = {int(a.pid) for a in alive if a.pid is not None}
    pid = child
    while pid > 1 and pid not in workers:
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    assert pid in workers, (child, workers)
    return pid


def upload_volume(server: Server, lab: dict[str, Any], folder: Path, name: str) -> int:
    out = server.cli(
        "volume", "upload", str(folder), "--name", name, "-o", "json",
        token=lab["token"], tenant="lab",
    )  # fmt: skip
    return int(json.loads(out.stdout)["id"])
