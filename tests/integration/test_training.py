"""Training on the local cluster: the queue, runs, stop/resume, recovery and every bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.digits import make_digits
from ncloud.client import Client
from ncloud.errors import Conflict, InvalidInput, NotFound, QuotaExceeded
from tests.integration.conftest import Server, kill_controller, upload_dataset, wait_for

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


@pytest.fixture(scope="module")
def lab(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tenant with the whole cluster (2 one-CPU bundles, 1 GiB each) and the digits uploaded."""
    data = tmp_path_factory.mktemp("train-digits")
    make_digits(data, size=16)
    admin = server.client()
    admin.tenants.add("lab", 2, 0, "2GiB")
    user = admin.users.add("tess@example.com", ["lab"])
    ids = {}
    for split in ("train", "valid"):
        ids[split] = upload_dataset(server, data / f"{split}.tsv", split, user["token"], "lab")
    try:
        yield {"token": user["token"], "tenant": "lab", "data": data, **ids}
    finally:
        client = server.client(token=user["token"], tenant="lab")
        for m in client.models.list("training"):
            client.models.stop(m["id"])
        admin.users.remove("tess@example.com")
        admin.tenants.remove("lab", force=True)


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


def test_yaml_cnn_trains_to_its_stated_accuracy_with_the_cli(
    server: Server, lab: dict[str, Any], tmp_path: Path
) -> None:
    out = server.cli(
        "model",
        "train",
        str(ROOT / "examples/cnn.yaml"),
        "--dataset",
        f"train:{lab['train']},valid:{lab['valid']}",
        "-e",
        "6",
        "-z",
        "64",
        "-n",
        "digits-cnn",
        "-L",
        token=lab["token"],
        tenant=lab["tenant"],
    )
    shown = out.stdout + out.stderr  # -L streams the run's log, then says how it ended
    assert "training cnn.yaml:" in shown and "epochs 1..6" in shown
    assert "Completed after 6 epoch(s)" in shown
    client = as_user(server, lab)
    model = next(m for m in client.models.list() if m["name"] == "digits-cnn")
    found = client.models.show(model["id"])
    assert found["status"] == "Completed" and found["epochs_done"] == 6
    assert [m["epoch"] for m in found["metrics"]] == [1, 2, 3, 4, 5, 6]
    assert found["metrics"][-1]["valid_accuracy"] >= 0.95  # examples/cnn.yaml states ~98%
    assert found["metrics"][-1]["train_loss"] < found["metrics"][0]["train_loss"]
    shown = server.cli("model", "show", str(model["id"]), token=lab["token"], tenant="lab")
    assert "ACCURACY" in shown.stdout and "TRAIN LOSS" in shown.stdout
    log = server.cli("model", "show", str(model["id"]), "-l", token=lab["token"], tenant="lab")
    assert "epoch 6" in log.stdout
    server.cli(
        "model", "results", str(model["id"]), "-d", str(tmp_path), token=lab["token"], tenant="lab"
    )
    got = tmp_path / f"model-{model['id']}"
    assert (got / "model.pt").is_file() and (got / "meta.json").is_file()
    assert json.loads((got / "metrics.json").read_text())[-1]["epoch"] == 6
    stop_done = server.cli(
        "model", "stop", str(model["id"]), check=False, token=lab["token"], tenant="lab"
    )
    assert stop_done.returncode == 1 and "Completed" in stop_done.stderr


BAD_SPECS = [
    ("net.yaml", "layers:\n  - type: Linear\n    config: {out_features: 10\n", "line"),
    ("net.yaml", "layers:\n  - type: Warp\n", "Warp"),
    (
        "net.yaml",
        "layers:\n  - type: Conv2d\n    config: {out_channels: 4, kernal_size: 3}\n",
        "layer",
    ),
    (
        "net.yaml",
        "layers:\n  - type: Flatten\n  - type: Linear\n    config: {out_features: 7}\n",
        "10 classes",
    ),
    ("net.py", "def model(num_classes, input_shape)\n    return None\n", "line 1"),
    ("net.py", "import torch\n\ndef build():\n    return None\n", r"model\("),
]


@pytest.mark.parametrize(("spec_name", "text", "match"), BAD_SPECS)
def test_bad_specs_are_refused_at_submit(
    server: Server, lab: dict[str, Any], spec_name: str, text: str, match: str
) -> None:
    client = as_user(server, lab)
    with pytest.raises(InvalidInput, match=match):
        submit(client, lab, "bad-spec", text, spec_name=spec_name)
    assert all(m["name"] != "bad-spec" for m in client.models.list())


def test_bad_requests_are_refused_and_store_nothing(
    server: Server, lab: dict[str, Any], tenant: Any
) -> None:
    client = as_user(server, lab)
    text = (ROOT / "examples/mlp.yaml").read_text()
    with pytest.raises(InvalidInput, match="epochs"):
        submit(client, lab, "x", text, spec_name="mlp.yaml", epochs=0)
    with pytest.raises(InvalidInput, match="batch"):
        submit(client, lab, "x", text, spec_name="mlp.yaml", batch_size=0)
    with pytest.raises(QuotaExceeded, match="worker"):
        submit(client, lab, "x", text, spec_name="mlp.yaml", workers=3)
    with pytest.raises(QuotaExceeded, match="GPU"):
        submit(client, lab, "x", text, spec_name="mlp.yaml", gpus=1)
    with pytest.raises(NotFound):
        submit(client, lab, "x", text, spec_name="mlp.yaml", volume=999)
    # Another tenant's dataset is not found, exactly like a missing one.
    tenant("elsewhere", cpus=1)
    other = server.client().users.add("oz@example.com", ["elsewhere"])
    try:
        theirs = server.client(token=other["token"], tenant="elsewhere")
        with pytest.raises(NotFound):
            theirs.models.train("steal", "mlp.yaml", text, lab["train"])
        with pytest.raises(NotFound):
            theirs.models.show(1)
    finally:
        server.client().users.remove("oz@example.com")
    # A dataset that is not Ready yet.
    pending = client.datasets.create("pending", (lab["data"] / "holdout.tsv").read_bytes(), "h.tsv")
    try:
        with pytest.raises(Conflict, match="Uploading"):
            client.models.train("x", "mlp.yaml", text, pending["id"])
    finally:
        client.datasets.remove(pending["id"])
    assert all(m["name"] != "x" for m in client.models.list())


def test_stop_then_resume_continues_the_metrics(server: Server, lab: dict[str, Any]) -> None:
    client = as_user(server, lab)
    model = submit(client, lab, "stop-resume", slow_py(sleep=0.03), epochs=30, batch_size=64)
    wait_for(lambda: client.models.show(model["id"])["epochs_done"] >= 2, 240, "two epochs")
    stopped = client.models.stop(model["id"])
    assert stopped["status"] == "Stopped"
    found = client.models.show(model["id"])
    assert found["checkpoints"] and found["checkpoints"][-1] >= 2
    resumed = server.cli(
        "model",
        "resume",
        str(model["id"]),
        "-e",
        str(found["epochs_done"] + 2),
        "-L",
        token=lab["token"],
        tenant=lab["tenant"],
    )
    assert resumed.returncode == 0
    done = client.models.show(model["id"])
    assert done["status"] == "Completed" and done["attempt"] == 2
    epochs = [m["epoch"] for m in done["metrics"]]
    assert epochs == list(range(1, done["epochs_done"] + 1))
    assert [m["attempt"] for m in done["metrics"]][-1] == 2
    with pytest.raises(Conflict):
        client.models.stop(model["id"])


def test_a_run_stopped_while_queued_cannot_resume(server: Server, lab: dict[str, Any]) -> None:
    client = as_user(server, lab)
    # Long enough to outlast a slow start of the pool workers on a busy machine.
    blocker = submit(client, lab, "blocker", slow_py(sleep=0.05), epochs=500, workers=2)
    until(client, blocker["id"], {"Starting", "Running"})
    queued = submit(client, lab, "waiter", slow_py(), epochs=1)
    try:
        found = wait_for(
            lambda: (m := client.models.show(queued["id"]))["reason"] and m, 120, "a reason"
        )
        assert found["status"] == "Queued" and found["position"] == 1
        assert "needs 1 free worker slot" in found["reason"]
        assert client.models.stop(queued["id"])["status"] == "Stopped"
        with pytest.raises(Conflict, match="no checkpoint"):
            client.models.resume(queued["id"])
    finally:
        client.models.stop(blocker["id"])


def test_user_code_that_raises_fails_without_retry(server: Server, lab: dict[str, Any]) -> None:
    client = as_user(server, lab)
    model = submit(client, lab, "raises", slow_py("raise"), epochs=2)
    found = until(client, model["id"], TERMINAL)
    assert found["status"] == "Failed" and found["restarts"] == 0
    assert "boom in user code" in found["error"] and "Traceback" in found["error"]
    follow = server.cli(
        "model", "show", str(model["id"]), "-L", check=False, token=lab["token"], tenant="lab"
    )
    assert follow.returncode == 1 and "failed" in follow.stderr


def test_user_code_that_exhausts_memory_fails_clearly(server: Server, lab: dict[str, Any]) -> None:
    client = as_user(server, lab)
    model = submit(client, lab, "hog", slow_py("hog", sleep=0.0), epochs=3)
    found = until(client, model["id"], TERMINAL)
    assert found["status"] == "Failed" and found["restarts"] == 0
    assert "out of memory" in found["error"]


def test_sigkill_of_a_worker_resumes_from_the_last_checkpoint(
    server: Server, lab: dict[str, Any]
) -> None:
    client = as_user(server, lab)
    model = submit(client, lab, "killed", slow_py(sleep=0.03), epochs=5)
    wait_for(lambda: client.models.show(model["id"])["epochs_done"] >= 2, 240, "two epochs")
    before = client.models.show(model["id"])["epochs_done"]
    os.kill(running_pid(client, model["id"]), signal.SIGKILL)
    found = until(client, model["id"], TERMINAL)
    assert found["status"] == "Completed" and found["restarts"] == 1
    assert [m["epoch"] for m in found["metrics"]] == [1, 2, 3, 4, 5]
    log = "\n".join(e["line"] for e in client.models.logs(model["id"])["lines"])
    resumed = [int(n) for n in re.findall(r"resumed from the checkpoint of epoch (\d+)", log)]
    assert len(resumed) == 1 and before <= resumed[0] < 5, log[-2000:]


def test_the_queue_runs_in_priority_then_fifo_order(server: Server, lab: dict[str, Any]) -> None:
    client = as_user(server, lab)
    mlp = (ROOT / "examples/mlp.yaml").read_text()
    blocker = submit(client, lab, "q-blocker", slow_py(sleep=0.05), epochs=500, workers=2)
    until(client, blocker["id"], {"Starting", "Running"})
    later = [
        client.models.train(
            f"q-{name}", "mlp.yaml", mlp, lab["train"], epochs=1, workers=2, priority=prio
        )
        for name, prio in (("low-a", 0), ("high", 5), ("low-b", 0))
    ]
    waiting = {m["id"]: m for m in client.models.list("training")}
    assert all(waiting[m["id"]]["status"] == "Queued" for m in later)
    found = wait_for(
        lambda: (m := client.models.show(later[2]["id"]))["reason"] and m, 30, "a reason"
    )
    assert found["position"] == 3 and "behind earlier runs" in found["reason"]
    assert client.models.stop(blocker["id"])["status"] == "Stopped"
    ids = [m["id"] for m in later]
    for model_id in ids:
        assert until(client, model_id, TERMINAL)["status"] == "Completed"
    started = {i: client.models.show(i)["started_at"] for i in ids}
    assert sorted(ids, key=lambda i: started[i]) == [ids[1], ids[0], ids[2]]


def test_sigkill_of_the_controller_loses_no_run(server: Server, lab: dict[str, Any]) -> None:
    client = as_user(server, lab)
    running = submit(client, lab, "survivor", slow_py(sleep=0.05), epochs=15, workers=2)
    queued = client.models.train(
        "survivor-queued",
        "mlp.yaml",
        (ROOT / "examples/mlp.yaml").read_text(),
        lab["train"],
        epochs=1,
    )
    wait_for(lambda: client.models.show(running["id"])["epochs_done"] >= 1, 120, "an epoch")
    assert client.models.show(queued["id"])["status"] == "Queued"
    kill_controller(server)
    for model_id in (running["id"], queued["id"]):
        assert until(client, model_id, TERMINAL, 300)["status"] == "Completed"
    assert client.models.show(running["id"])["epochs_done"] == 15


def test_a_volume_is_readable_and_written_back(
    server: Server, lab: dict[str, Any], tmp_path: Path
) -> None:
    client = as_user(server, lab)
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "words.txt").write_text("alpha\nbeta\n")
    out = server.cli(
        "volume",
        "upload",
        str(tmp_path / "vocab"),
        "--name",
        "vocab",
        "-o",
        "json",
        token=lab["token"],
        tenant="lab",
    )
    volume = json.loads(out.stdout)["id"]
    text = slow_py(sleep=0.0).replace(
        "def model(num_classes, input_shape):",
        "def model(num_classes, input_shape):\n"
        "    import os, pathlib\n"
        "    data = pathlib.Path(os.environ.get('NCLOUD_DATA_DIR', '/nonexistent'))\n"
        "    if data.exists():\n"
        "        words = (data / 'words.txt').read_text().split()\n"
        "        (data / 'out.txt').write_text(str(len(words)))",
    )
    model = submit(client, lab, "with-volume", text, epochs=1, volume=volume)
    assert until(client, model["id"], TERMINAL)["status"] == "Completed"
    files = client.volumes.show(volume)
    assert "out.txt" in json.dumps(files["file_list"])
    log = "\n".join(e["line"] for e in client.models.logs(model["id"])["lines"])
    assert f"saved 1 file(s) from /data back to volume {volume}" in log  # words.txt as pulled


def _volume(server: Server, lab: dict[str, Any], folder: Path, name: str) -> int:
    out = server.cli(
        "volume", "upload", str(folder), "--name", name, "-o", "json",
        token=lab["token"], tenant="lab",
    )  # fmt: skip
    return int(json.loads(out.stdout)["id"])


def test_two_volumes_at_paths_of_the_users_choosing(
    server: Server, lab: dict[str, Any], tmp_path: Path
) -> None:
    for name, content in (("notes", "n"), ("tables", "t")):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.txt").write_text(content)
    notes = _volume(server, lab, tmp_path / "notes", "notes")
    tables = _volume(server, lab, tmp_path / "tables", "tables")
    text = slow_py(sleep=0.0).replace(
        "def model(num_classes, input_shape):",
        "def model(num_classes, input_shape):\n"
        "    import pathlib\n"
        "    if pathlib.Path('/lookup').exists():  # not at the submit-time check\n"
        "        seen = pathlib.Path('/data/notes.txt').read_text()\n"
        "        seen += pathlib.Path('/lookup/tables.txt').read_text()\n"
        "        pathlib.Path('/lookup/seen.txt').write_text(seen)\n"
        "        print('volumes said', seen)",
    )
    (tmp_path / "net.py").write_text(text)
    out = server.cli(
        "model", "train", str(tmp_path / "net.py"), "--dataset", f"train:{lab['train']}",
        "-e", "1", "-n", "two-volumes", "-v", str(notes), "-v", f"{tables}:/lookup",
        "-o", "json", token=lab["token"], tenant="lab",
    )  # fmt: skip
    model = json.loads(out.stdout)
    assert model["volumes"] == [{"id": notes, "path": "/data"}, {"id": tables, "path": "/lookup"}]
    client = as_user(server, lab)
    assert until(client, model["id"], TERMINAL)["status"] == "Completed"
    log = "\n".join(e["line"] for e in client.models.logs(model["id"])["lines"])
    assert "volumes said nt" in log
    assert "seen.txt" in json.dumps(client.volumes.show(tables)["file_list"])
    assert "seen.txt" not in json.dumps(client.volumes.show(notes)["file_list"])


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ("/usr/share", "the sandbox's own"),
        ("relative", "absolute path"),
        ("/data/../etc", "absolute path"),
        ("/job/out", "the sandbox's own"),
        ("/", "absolute path"),
    ],
)
def test_bad_volume_mounts_are_refused(
    server: Server, lab: dict[str, Any], tmp_path: Path, mount: str, message: str
) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "f.txt").write_text("x")
    volume = _volume(server, lab, tmp_path / "v", f"bad-{abs(hash(mount))}")
    client = as_user(server, lab)
    mlp = (ROOT / "examples/mlp.yaml").read_text()
    before = len(client.models.list())
    with pytest.raises(InvalidInput, match=message):
        submit(client, lab, "m", mlp, spec_name="mlp.yaml", volumes=[{"id": volume, "path": mount}])
    with pytest.raises(InvalidInput, match="overlaps"):
        overlapping = [{"id": volume, "path": "/a"}, {"id": volume, "path": "/a/b"}]
        submit(client, lab, "m", mlp, spec_name="mlp.yaml", volumes=overlapping)
    bad = server.cli(
        "model", "train", str(ROOT / "examples/mlp.yaml"), "--dataset", f"train:{lab['train']}",
        "-v", "seven", check=False, token=lab["token"], tenant="lab",
    )  # fmt: skip
    assert bad.returncode == 1 and "give ID or ID:PATH" in bad.stderr
    assert len(client.models.list()) == before
    client.volumes.remove(volume)


def test_ray_job_submit_trains_without_the_control_plane(
    server: Server, lab: dict[str, Any], tmp_path: Path
) -> None:
    env = {**os.environ, **{k: v for k, v in server.env.items() if k.startswith("RAY_")}}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ray"),
            "job",
            "submit",
            "--address",
            server.dashboard_url,
            "--",
            sys.executable,
            "-m",
            "jobs.training",
            "--spec",
            str(ROOT / "examples/mlp.yaml"),
            "--manifest",
            str(lab["data"] / "valid.tsv"),
            "-e",
            "2",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout and "epoch" in proc.stdout.lower()


def test_train_cli_usage_errors_exit_2(server: Server, lab: dict[str, Any]) -> None:
    bad = server.cli(
        "model",
        "train",
        str(ROOT / "examples/mlp.yaml"),
        "--dataset",
        "test:x",
        check=False,
        token=lab["token"],
        tenant="lab",
    )
    assert bad.returncode == 2 and "train:ID" in bad.stderr
