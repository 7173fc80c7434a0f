"""Training on the local cluster: the queue, runs, stop/resume, recovery and every bad input."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ncloud.errors import Conflict, Forbidden, InvalidInput, NotFound, QuotaExceeded
from tests.integration.conftest import Server, kill_controller, wait_for
from tests.integration.lab import (
    ROOT,
    TERMINAL,
    as_user,
    running_pid,
    slow_py,
    submit,
    until,
    worker_actor_pid,
)


def test_yaml_cnn_trains_to_its_stated_accuracy_with_the_cli(
    server: Server, lab: dict[str, Any], tmp_path: Path
) -> None:
    out = server.cli(
        "train",  # `model` is the default group, as in Nervana's ncloud
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
    streamed = out.stdout + out.stderr  # -L streams the run's log, then says how it ended
    assert "training cnn.yaml:" in streamed and "epochs 1..6" in streamed
    assert "Completed after 6 epoch(s)" in streamed
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
    _results_list_tar_and_filter(server, lab, model["id"], tmp_path)
    stop_done = server.cli(
        "model", "stop", str(model["id"]), check=False, token=lab["token"], tenant="lab"
    )
    assert stop_done.returncode == 1 and "Completed" in stop_done.stderr


def _results_list_tar_and_filter(
    server: Server, lab: dict[str, Any], model_id: int, tmp_path: Path
) -> None:
    """`results --list`, `--tar`, `--filter GLOB` as Nervana's ncloud had them; the aliases."""
    as_lab = {"token": lab["token"], "tenant": lab["tenant"]}
    listed = json.loads(
        server.cli("m", "results", str(model_id), "--list", "-o", "json", **as_lab).stdout
    )
    names = {row["name"] for row in listed}
    assert {"model.pt", "meta.json", "metrics.json", "train.log", "curves.png"} <= names
    assert any(n.startswith("checkpoints/") for n in names), names
    assert next(r for r in listed if r["name"] == "model.pt")["bytes"] > 1000
    out = tmp_path / "tarred"
    server.cli("results", str(model_id), "--tar", "--filter", "*.json", "-d", str(out), **as_lab)
    with tarfile.open(out / f"model-{model_id}.tar.gz") as tar:
        # `*` matches across folders, as in `aws s3 cp --include`: the checkpoints' too
        inside = sorted(n.removeprefix("./") for n in tar.getnames() if "." in Path(n).name)
        assert inside == sorted(n for n in names if n.endswith(".json"))
        assert "meta.json" in inside and "metrics.json" in inside
    none = server.cli("results", str(model_id), "--filter", "*.onnx", check=False, **as_lab)
    assert none.returncode == 1 and "no result file of model" in none.stderr
    assert "matches '*.onnx'" in none.stderr and "Traceback" not in none.stderr
    both = server.cli("results", str(model_id), "--zip", "--tar", check=False, **as_lab)
    assert both.returncode == 2
    shown = json.loads(server.cli("ls", "-o", "json", **as_lab).stdout)
    assert model_id in {m["id"] for m in shown}


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


def test_a_corrupt_checkpoint_is_refused_by_name_and_skipped_saying_so(
    server: Server, lab: dict[str, Any]
) -> None:
    client = as_user(server, lab)
    model = submit(client, lab, "corrupt", slow_py(sleep=0.03), epochs=30, checkpoint_every=1)
    wait_for(lambda: client.models.show(model["id"])["epochs_done"] >= 3, 240, "three epochs")
    client.models.stop(model["id"])
    latest = client.models.show(model["id"])["checkpoints"][-1]
    folder = server.home / "storage" / "tenants" / lab["tenant"] / "models" / str(model["id"])
    pt = folder / "checkpoints" / f"ckpt-{latest:04d}.pt"
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))

    with pytest.raises(InvalidInput, match=rf"ckpt-{latest:04d}\.pt is corrupt"):
        client.models.resume(model["id"], epochs=latest + 3, checkpoint=latest)
    assert client.models.show(model["id"])["attempt"] == 1  # nothing queued
    client.models.resume(model["id"], epochs=latest + 3)
    first = client.models.show(model["id"])["runs"][-1]["history"][0]["note"]
    assert first.startswith(f"resumed from epoch {latest - 1} (checkpoint {latest} skipped: "), (
        first
    )
    assert "is corrupt" in first
    done = until(client, model["id"], TERMINAL)
    assert done["status"] == "Completed", done
    log = "\n".join(e["line"] for e in client.models.logs(model["id"])["lines"])
    assert f"checkpoint {latest} skipped: checkpoint" in log
    assert f"resumed from the checkpoint of epoch {latest - 1}" in log


def test_a_run_stopped_while_queued_resumes_from_the_start(
    server: Server, lab: dict[str, Any]
) -> None:
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
        again = client.models.resume(queued["id"])  # it never ran: it starts over, saying so
        assert again["status"] == "Queued" and again["attempt"] == 2, again
        runs = client.models.show(queued["id"])["runs"]
        assert runs[-1]["history"][0]["note"] == "no checkpoint: starting at epoch 1"
        assert client.models.stop(queued["id"])["status"] == "Stopped"
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


def test_a_dead_worker_actor_is_replaced_and_its_run_resumes(
    server: Server, lab: dict[str, Any]
) -> None:
    """SIGKILL of the worker actor's own process (as the OOM killer would): the run gets a
    new actor on the same bundle and resumes, spending one restart; the next run on that
    bundle spends none."""
    client = as_user(server, lab)
    model = submit(client, lab, "actor-killed", slow_py(sleep=0.03), epochs=5)
    wait_for(lambda: client.models.show(model["id"])["epochs_done"] >= 2, 240, "two epochs")
    actor = worker_actor_pid(server, running_pid(client, model["id"]))
    os.kill(actor, signal.SIGKILL)
    found = until(client, model["id"], TERMINAL)
    assert found["status"] == "Completed" and found["restarts"] == 1, found.get("error")
    assert [m["epoch"] for m in found["metrics"]] == [1, 2, 3, 4, 5]
    after = submit(client, lab, "after-actor-killed", slow_py(sleep=0.0), epochs=1)
    done = until(client, after["id"], TERMINAL)
    assert done["status"] == "Completed" and done["restarts"] == 0, done.get("error")


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
    assert sorted(ids, key=lambda i: started[i] or "") == [ids[1], ids[0], ids[2]]


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


REPORTING_PY = """
import torch
from torch import nn
from ncloud.training import report

BAD = {bad!r}


class Net(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
        self.calls = 0

    def forward(self, x):
        out = self.body(x)
        if self.training:
            self.calls += 1
            report(forward_calls=self.calls, weight_norm=self.body[1].weight.norm())
            if BAD:
                report(**{{BAD: 1.0}})
        return out


def model(num_classes, input_shape):
    return Net(num_classes, input_shape)
"""


def test_a_spec_reports_its_own_metrics_per_epoch(
    server: Server, lab: dict[str, Any], tmp_path: Path
) -> None:
    client = as_user(server, lab)
    model = submit(client, lab, "reports", REPORTING_PY.format(bad=""), epochs=3, batch_size=64)
    found = until(client, model["id"], TERMINAL)
    assert found["status"] == "Completed", found["error"]
    rows = found["metrics"]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    calls = [r["forward_calls"] for r in rows]  # the last value of each epoch, counted up
    assert calls[0] > 0 and calls == [calls[0] * e for e in (1, 2, 3)], calls
    assert all(r["weight_norm"] > 0 and r["train_loss"] > 0 for r in rows), rows
    shown = server.cli("model", "show", str(model["id"]), token=lab["token"], tenant="lab")
    assert "FORWARD" in shown.stdout and "WEIGHT" in shown.stdout, shown.stdout  # its columns

    # The terminal user's pictures: curves.png in the results, compare side by side and drawn.
    plain = submit(client, lab, "plain", REPORTING_PY.format(bad=""), epochs=2, seed=3)
    until(client, plain["id"], {"Completed"})
    as_lab = {"token": lab["token"], "tenant": "lab"}
    server.cli("model", "results", str(model["id"]), "--dir", str(tmp_path), **as_lab)
    curves = tmp_path / f"model-{model['id']}" / "curves.png"
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curves.stat().st_size > 10_000
    ids = [str(model["id"]), str(plain["id"])]
    picture = tmp_path / "compare.png"
    side = server.cli("model", "compare", *ids, "--plot", "--plot-file", str(picture), **as_lab)
    assert picture.read_bytes()[:4] == b"\x89PNG", side.stderr
    table = side.stdout
    assert "BEST" in table and "3/3" in table and "2/2" in table, table
    as_json = json.loads(server.cli("model", "compare", *ids, "-o", "json", **as_lab).stdout)
    assert [len(m["metrics"]) for m in as_json] == [3, 2]
    missing = server.cli("model", "compare", ids[0], "999999", check=False, **as_lab)
    assert missing.returncode == 1 and "no model 999999" in missing.stderr, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    many = server.cli("model", "compare", *[str(i) for i in range(1, 18)], check=False, **as_lab)
    assert many.returncode == 2 and "at most 16" in many.stderr, many.stderr

    # A name that is a built-in metric: the user's code gets a ValueError; the run fails
    # saying so, and stores nothing under that name.
    bad = submit(client, lab, "reports-bad", REPORTING_PY.format(bad="train_loss"), epochs=1)
    failed = until(client, bad["id"], TERMINAL)
    assert failed["status"] == "Failed" and failed["restarts"] == 0
    assert "ValueError" in failed["error"] and "not one of" in failed["error"], failed["error"]
    assert failed["metrics"] == []


def _held(history: list[dict[str, Any]]) -> float:
    """Seconds from the run's Starting to its end, by its own history."""
    at = {h["status"]: dt.datetime.fromisoformat(h["at"]) for h in history}
    return (at["Completed"] - at["Starting"]).total_seconds()


def test_usage_is_the_reservation_held_times_the_time(server: Server, lab: dict[str, Any]) -> None:
    client = as_user(server, lab)
    model = submit(client, lab, "metered", slow_py(sleep=0.05), epochs=3)
    wait_for(lambda: client.models.show(model["id"])["status"] == "Running", 120, "running")
    first = client.resources.usage()
    mine = [i for i in first["items"] if i["model"] == model["id"]]
    assert len(mine) == 1 and mine[0]["running"] and mine[0]["kind"] == "run", first
    later = wait_for(
        lambda: [
            i for i in client.resources.usage()["items"]
            if i["model"] == model["id"] and i["held_s"] > mine[0]["held_s"]
        ],
        30,
        "a running run's hours to count up",
    )  # fmt: skip
    assert later[0]["running"]

    done = until(client, model["id"], TERMINAL)
    assert done["status"] == "Completed"
    item = next(i for i in client.resources.usage()["items"] if i["model"] == model["id"])
    # The lab reserves 2 CPUs and 2 GiB: two bundles of 1 CPU and 1 GiB; one worker holds one.
    assert (item["cpus"], item["gpus"], item["memory"]) == (1.0, 0.0, 1 << 30), item
    assert item["periods"] == 1 and not item["running"] and item["name"] == "metered"
    assert abs(item["held_s"] - _held(done["runs"][-1]["history"])) < 0.5, (item, done["runs"])
    assert item["cpu_hours"] == pytest.approx(item["held_s"] / 3600)
    assert item["memory_gib_hours"] == pytest.approx(item["held_s"] / 3600)
    assert item["gpu_hours"] == 0

    # A deployment: its replica's bundle, from deploy to undeploy.
    client.models.deploy(model["id"])
    wait_for(lambda: client.models.deployment(model["id"])["status"] == "Deployed", 180, "deployed")
    client.models.undeploy(model["id"])
    wait_for(
        lambda: client.models.deployment(model["id"])["status"] == "Undeployed", 120, "undeployed"
    )
    report = client.resources.usage()
    served = [i for i in report["items"] if i["model"] == model["id"] and i["kind"] == "deployment"]
    assert len(served) == 1 and not served[0]["running"] and served[0]["held_s"] > 0, served
    assert served[0]["cpus"] == 1.0
    lab_total = next(t for t in report["tenants"] if t["tenant"] == "lab")
    assert lab_total["cpu_hours"] >= item["cpu_hours"] + served[0]["cpu_hours"] - 1e-9

    # --since: what began before counts from then; after everything ended, nothing.
    assert client.resources.usage(since="2999-01-01")["items"] == []
    # The CLI; bad input; another tenant's; an admin sees every tenant's.
    shown = server.cli("usage", token=lab["token"], tenant="lab")
    assert "tenant lab:" in shown.stderr and "CPU-hours" in shown.stderr, shown
    listed = json.loads(server.cli("usage", "-o", "json", token=lab["token"], tenant="lab").stdout)
    assert "metered" in {i["name"] for i in listed["items"]}
    bad = server.cli("usage", "--since", "yesterday", check=False, token=lab["token"])
    assert bad.returncode == 1 and "ISO date" in bad.stderr, bad.stderr
    with pytest.raises(Forbidden):
        client.resources.usage(tenant="somebody-else")
    everyone = server.client().resources.usage()
    assert "lab" in {t["tenant"] for t in everyone["tenants"]}
