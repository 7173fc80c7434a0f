"""Volumes in training: mounted at /data or at paths of the user's choosing, written back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ncloud.errors import InvalidInput
from tests.integration.conftest import Server
from tests.integration.lab import ROOT, TERMINAL, as_user, slow_py, submit, until, upload_volume


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


def test_two_volumes_at_paths_of_the_users_choosing(
    server: Server, lab: dict[str, Any], tmp_path: Path
) -> None:
    for name, content in (("notes", "n"), ("tables", "t")):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.txt").write_text(content)
    notes = upload_volume(server, lab, tmp_path / "notes", "notes")
    tables = upload_volume(server, lab, tmp_path / "tables", "tables")
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
    volume = upload_volume(server, lab, tmp_path / "v", f"bad-{abs(hash(mount))}")
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
