"""A full disk: uploads, volume writes, ingests and checkpoints that hit ENOSPC are a clear
507 storage_full (or an Error saying so), keep nothing half-written, and what failed can be
retried: a run that lost a checkpoint resumes.

The tenant's storage prefix is a small tmpfs mounted for this module (root only; skipped
where mounting is not allowed), so only this tenant's disk is full.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.digits import make_digits
from ncloud.errors import StorageFull
from tests.integration.conftest import Server, upload_dataset, wait_for
from tests.integration.lab import TERMINAL, until

TENANT = "diskfull"
SIZE = 16 << 20  # the digits take 6 MiB of it: 1,430 small files

# A network whose checkpoint is `ballast` bytes: one fits in the disk's free space, two do not.
BALLAST_PY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
        self.register_buffer("ballast", torch.zeros({floats}))

    def forward(self, x):
        return self.body(x)


def model(num_classes, input_shape):
    return Net(num_classes, input_shape)
"""


def _mount(where: Path, size: int, remount: bool = False) -> subprocess.CompletedProcess[bytes]:
    options = f"{'remount,' if remount else ''}size={size}"
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def disk(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tenant whose storage is a 16 MiB tmpfs, with the digits uploaded onto it."""
    where = server.home / "storage" / "tenants" / TENANT
    where.mkdir(parents=True, exist_ok=True)
    mounted = _mount(where, SIZE)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    admin = server.client()
    try:
        admin.tenants.add(TENANT, 1, 0, "1GiB")
        user = admin.users.add("dora@example.com", [TENANT])
        data = tmp_path_factory.mktemp("disk-digits")
        make_digits(data, size=16)
        train = upload_dataset(server, data / "train.tsv", "train", user["token"], TENANT)
        yield {"where": where, "token": user["token"], "train": train, "data": data}
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True, timeout=30)
        admin.tenants.remove(TENANT, force=True)


def _free(where: Path) -> int:
    found = os.statvfs(where)
    return found.f_bavail * found.f_frsize


def test_an_upload_or_volume_write_onto_a_full_disk_is_507_and_keeps_nothing(
    server: Server, disk: dict[str, Any]
) -> None:
    client = server.client(token=disk["token"], tenant=TENANT)
    too_big = _free(disk["where"]) + (1 << 20)
    chunks = lambda: (b"x" * (256 << 10) for _ in range(-(-too_big // (256 << 10))))  # noqa: E731
    size = -(-too_big // (256 << 10)) * (256 << 10)

    ds = client.datasets.create("big", b"@FILE\nbig.bin\n", "big.tsv")
    with pytest.raises(StorageFull, match="storage is full"):
        client.datasets.put_file(ds["id"], "big.bin", chunks(), size)
    assert client.datasets.files(ds["id"]) == {"big.tsv": len(b"@FILE\nbig.bin\n")}
    assert client.datasets.show(ds["id"])["status"] == "Uploading"

    volume = client.volumes.create("vocab")
    with pytest.raises(StorageFull, match="storage is full"):
        client.volumes.put_file(volume["id"], "words.bin", chunks(), size)
    assert client.volumes.show(volume["id"])["file_list"] == []
    client.volumes.put_file(volume["id"], "small.txt", iter([b"fits"]), 4)  # space came back
    assert [f["path"] for f in client.volumes.show(volume["id"])["file_list"]] == ["small.txt"]
    client.volumes.remove(volume["id"])
    client.datasets.remove(ds["id"])


def test_an_ingest_onto_a_full_disk_is_an_error_saying_so_and_a_retry_succeeds(
    server: Server, disk: dict[str, Any]
) -> None:
    client = server.client(token=disk["token"], tenant=TENANT)
    manifest = disk["data"] / "valid.tsv"
    ds = client.datasets.create("valid", manifest.read_bytes(), "valid.tsv")
    for name in ds["needed"]:
        data = (disk["data"] / name).read_bytes()
        client.datasets.put_file(ds["id"], name, iter([data]), len(data))
    ballast = disk["where"] / "ballast.bin"  # the disk fills up from elsewhere
    with open(ballast, "wb") as out:
        try:
            while True:
                out.write(b"\0" * (64 << 10))
                out.flush()
        except OSError:
            pass
    try:
        client.datasets.ingest(ds["id"])
        failed = wait_for(
            lambda: (d := client.datasets.show(ds["id"]))["status"] in ("Error", "Ready") and d,
            120,
            "the ingest to end",
        )
        assert failed["status"] == "Error" and "storage is full" in str(failed["error"]), failed
        assert "ncloud dataset ingest" in str(failed["error"])
    finally:
        ballast.unlink()
    client.datasets.ingest(ds["id"])
    ready = wait_for(
        lambda: (d := client.datasets.show(ds["id"]))["status"] in ("Error", "Ready") and d,
        120,
        "the retried ingest",
    )
    assert ready["status"] == "Ready", ready
    client.datasets.remove(ds["id"])


def test_a_run_that_cannot_checkpoint_fails_saying_so_and_resumes_from_its_last_good_one(
    server: Server, disk: dict[str, Any]
) -> None:
    client = server.client(token=disk["token"], tenant=TENANT)
    floats = int(_free(disk["where"]) * 0.6) // 4  # a checkpoint of 60% of the free space
    spec = BALLAST_PY.format(floats=floats)
    model = client.models.train("ballast", "net.py", spec, disk["train"], epochs=3)
    failed = until(client, model["id"], TERMINAL)
    assert failed["status"] == "Failed" and "storage is full" in str(failed["error"]), failed
    assert client.models.show(model["id"])["checkpoints"] == [1]

    assert _mount(disk["where"], 64 << 20, remount=True).returncode == 0  # an operator adds space
    client.models.resume(model["id"])
    done = until(client, model["id"], TERMINAL)
    assert done["status"] == "Completed", done.get("error")
    shown = client.models.show(model["id"])
    assert shown["runs"][-1]["history"][0]["note"] == "resumed from epoch 1"
    assert [m["epoch"] for m in shown["metrics"]] == [1, 2, 3]
