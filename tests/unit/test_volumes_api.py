"""Volumes' API in process (FastAPI TestClient) on a real SQLite store, and the CLI through
CliRunner over that API."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from ncloud.cli import common
from ncloud.cli.main import app, main
from ncloud.client import Client
from ncloud.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from tests.archives import tar_of
from tests.unit.conftest import LIMIT, make_folder, volume_files

runner = CliRunner()


def _raw(c: Client) -> httpx.Client:
    return c._http


def test_api_round_trip_and_tenant_isolation(api: Callable[..., Client]) -> None:
    ada, bob = api("ada"), api("bob")
    v = ada.volumes.create("vocab")
    assert v["files"] == 0
    put = ada.volumes.put_file(v["id"], "dir/my words #1.txt", iter([b"ab", b"c"]), 3)
    assert put["path"] == "dir/my words #1.txt" and put["volume"]["bytes"] == 3
    shown = ada.volumes.show(v["id"])
    assert shown["file_list"] == [{"path": "dir/my words #1.txt", "bytes": 3}]
    got = _raw(ada).get(f"/volumes/{v['id']}/files/dir/my%20words%20%231.txt")
    assert got.status_code == 200 and got.content == b"abc"
    for call in (
        lambda: bob.volumes.show(v["id"]),
        lambda: bob.volumes.remove(v["id"]),
        lambda: bob.volumes.put_file(v["id"], "x", iter([b"x"]), 1),
        lambda: bob.volumes.remove_file(v["id"], "dir/my words #1.txt"),
    ):
        with pytest.raises(NotFound, match=f"^no volume {v['id']}$"):
            call()
    assert bob.volumes.list() == []
    assert _raw(bob).get(f"/volumes/{v['id']}/files/dir/a").json()["code"] == "not_found"
    ada.volumes.remove_file(v["id"], "dir/my words #1.txt")
    assert ada.volumes.show(v["id"])["files"] == 0
    assert ada.volumes.remove(v["id"])["removed"] is True
    assert ada.volumes.list() == []


@pytest.mark.parametrize(
    "route",
    [
        "..%2F..%2Fescape.txt",
        "a/..%2F..%2Fescape.txt",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "s3:%2F%2Fbucket%2Fk",
        "",
    ],
)
def test_api_path_escapes_are_422(api: Callable[..., Client], route: str) -> None:
    ada = api()
    vid = ada.volumes.create("v")["id"]
    response = _raw(ada).put(
        f"/volumes/{vid}/files/{route}",
        content=b"evil",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_input"
    assert volume_files("vision") == []


def test_api_too_large_is_413_and_leaves_nothing(api: Callable[..., Client]) -> None:
    ada = api()
    vid = ada.volumes.create("v")["id"]
    with pytest.raises(PayloadTooLarge):
        ada.volumes.put_file(vid, "big.bin", iter([b"x" * (LIMIT + 1)]), LIMIT + 1)
    # Without a Content-Length the limit holds while streaming.
    chunked = _raw(ada).put(
        f"/volumes/{vid}/files/big.bin",
        content=iter([b"x" * 1024] * 5),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert chunked.status_code == 413 and chunked.json()["code"] == "payload_too_large"
    assert ada.volumes.show(vid)["file_list"] == []
    assert volume_files("vision") == []


def test_api_auth_names_and_duplicates(api: Callable[..., Client]) -> None:
    assert _raw(api(None)).get("/volumes").status_code == 401
    with pytest.raises(InvalidInput, match="1-64 characters"):
        api().volumes.create("bad name")
    api().volumes.create("dup")
    with pytest.raises(Conflict, match="exists already"):
        api().volumes.create("dup")
    bad = _raw(api()).post("/volumes", json={"name": "x", "extra": 1})
    assert bad.status_code == 422


@pytest.fixture
def cli_api(api: Callable[..., Client], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Client]:
    monkeypatch.setattr(common, "client", lambda: api())
    return api


def _main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> tuple[int, str, str]:
    """Run the real entry point (its error boundary included)."""
    monkeypatch.setattr(sys, "argv", ["ncloud", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_upload_show_download_rm(
    cli_api: Callable[..., Client], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_folder(
        tmp_path / "local-folder",
        {"words.txt": b"alpha\nbeta\n", "deep/er/ids.bin": os.urandom(3000), ".hidden": b"h"},
    )
    result = runner.invoke(app, ["volume", "upload", str(src), "--name", "vocab", "-o", "json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)  # the progress bar stays off stdout
    assert (made["name"], made["files"], made["uploaded"]) == ("vocab", 2, 2)
    assert f"ncloud volume show {made['id']}" in result.stderr
    assert f"-v {made['id']}" in result.stderr

    more = make_folder(tmp_path / "more", {"words.txt": b"gamma\n", "new.txt": b"n"})
    again = runner.invoke(app, ["volume", "upload", str(more), "-i", str(made["id"]), "-o", "json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["files"] == 3

    listed = runner.invoke(app, ["volume", "ls", "-o", "json"])
    assert [v["name"] for v in json.loads(listed.stdout)] == ["vocab"]
    shown = json.loads(runner.invoke(app, ["volume", "show", str(made["id"]), "-o", "json"]).stdout)
    assert [f["path"] for f in shown["file_list"]] == ["deep/er/ids.bin", "new.txt", "words.txt"]
    table = runner.invoke(app, ["volume", "show", str(made["id"])])
    assert table.exit_code == 0 and "deep/er/ids.bin" in table.stdout

    monkeypatch.chdir(tmp_path)
    got = runner.invoke(app, ["volume", "download", str(made["id"])])
    assert got.exit_code == 0, got.output
    assert (tmp_path / "vocab" / "deep/er/ids.bin").read_bytes() == (
        src / "deep/er/ids.bin"
    ).read_bytes()
    assert (tmp_path / "vocab" / "words.txt").read_bytes() == b"gamma\n"
    assert not (tmp_path / "vocab" / ".hidden").exists()
    elsewhere = runner.invoke(app, ["volume", "download", str(made["id"]), "-d", "out"])
    assert elsewhere.exit_code == 0 and (tmp_path / "out" / "new.txt").read_bytes() == b"n"

    refused = runner.invoke(app, ["volume", "rm", str(made["id"])])  # not a tty, no --yes
    assert refused.exit_code != 0
    gone = runner.invoke(app, ["volume", "rm", str(made["id"]), "--yes", "-o", "json"])
    assert gone.exit_code == 0 and json.loads(gone.stdout)["removed"] is True
    assert json.loads(runner.invoke(app, ["volume", "ls", "-o", "json"]).stdout) == []


def test_cli_symlink_escape_is_exit_1_and_uploads_nothing(
    cli_api: Callable[..., Client],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = make_folder(tmp_path / "vocab", {"ok.txt": b"ok"})
    (tmp_path / "secret").write_bytes(b"private")
    (src / "leak").symlink_to(tmp_path / "secret")
    code, out, err = _main(["volume", "upload", str(src), "--name", "v"], monkeypatch, capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "leak is a link that leaves" in err
    assert cli_api().volumes.list() == []


def test_cli_failed_upload_removes_the_new_volume(
    cli_api: Callable[..., Client],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = make_folder(tmp_path / "v", {"small.txt": b"s", "huge.bin": b"x" * (LIMIT + 1)})
    code, _, err = _main(["volume", "upload", str(src), "--name", "v"], monkeypatch, capsys)
    assert code == 1 and "over the" in err and "the new volume was removed" in err
    assert cli_api().volumes.list() == []
    assert volume_files("vision") == []


def test_cli_usage_and_emptymake_folder(
    cli_api: Callable[..., Client],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = make_folder(tmp_path / "v", {".only-hidden": b"h"})
    code, _, err = _main(["volume", "upload", str(src), "-n", "a", "-i", "1"], monkeypatch, capsys)
    assert code == 2 and "not both" in err
    code, _, err = _main(["volume", "upload", str(src), "-n", "a"], monkeypatch, capsys)
    assert code == 1 and "no files to upload" in err
    code, _, err = _main(["volume", "show", "12345"], monkeypatch, capsys)
    assert (code, err.strip()) == (1, "error: no volume 12345")
    assert cli_api().volumes.list() == []


def test_an_archive_member_over_the_file_limit_is_413_and_nothing_is_stored(
    api: Callable[..., Client],
) -> None:
    """An archive may be larger than NCLOUD_MAX_FILE_BYTES; each file in it may not."""
    ada, bob = api("ada"), api("bob")
    v = ada.volumes.create("packed")
    small = [(f"f{i}.bin", os.urandom(LIMIT // 2)) for i in range(4)]  # 2x the limit in all
    found = ada.volumes.put_files(v["id"], tar_of(list(small)))
    assert (found["files"], found["volume"]["files"]) == (4, 4)
    with pytest.raises(PayloadTooLarge, match=r"archive member 'big\.bin' is"):
        ada.volumes.put_files(v["id"], tar_of([("ok.txt", b"ok"), ("big.bin", b"x" * (LIMIT + 1))]))
    assert volume_files("vision") == [f"{v['id']}/f{i}.bin" for i in range(4)]
    with pytest.raises(NotFound, match=f"^no volume {v['id']}$"):  # another tenant's volume
        bob.volumes.put_files(v["id"], tar_of([("x.txt", b"x")]))
