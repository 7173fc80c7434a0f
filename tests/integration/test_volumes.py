"""Volumes over real HTTP against the real local cluster: the CLI round trip and bad input."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from ncloud.errors import Conflict, InvalidInput, NotFound
from tests.archives import tar_of
from tests.integration.conftest import Server


@pytest.fixture
def ada(server: Server, tenant: Callable[..., Any]) -> Iterator[dict[str, Any]]:
    """A user in tenant vol-a (1 CPU), with a token; removed afterwards with the tenant."""
    tenant("vol-a")
    made = server.client().users.add("vol-ada@example.com", ["vol-a"])
    yield {"token": made["token"], "tenant": "vol-a"}
    server.client().users.remove("vol-ada@example.com")


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _stored(server: Server, tenant: str, volume_id: int) -> list[str]:
    """Files on the server's storage for a volume, temporary ones included."""
    root = server.home / "storage" / "tenants" / tenant / "volumes" / str(volume_id)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_upload_show_download_replace_rm(
    server: Server, ada: dict[str, Any], tmp_path: Path
) -> None:
    as_ada = {"token": ada["token"], "tenant": ada["tenant"]}
    src = _tree(
        tmp_path / "vocab",
        {
            "words.txt": b"alpha\nbeta\n",
            "tables/ids.bin": os.urandom(3 << 20),  # several chunks
            "tables/empty.txt": b"",
            ".env": b"SECRET=1",
            ".cache/blob": b"x",
        },
    )
    up = server.cli("volume", "upload", str(src), "--name", "vocab", "-o", "json", **as_ada)
    made = json.loads(up.stdout)
    vid = made["id"]
    assert (made["name"], made["files"], made["bytes"]) == ("vocab", 3, 11 + (3 << 20))
    assert f"ncloud volume show {vid}" in up.stderr and f"-v {vid}" in up.stderr

    more = _tree(tmp_path / "more", {"words.txt": b"gamma\n", "extra/new.txt": b"new"})
    server.cli("volume", "upload", str(more), "-i", str(vid), **as_ada)
    shown = json.loads(server.cli("volume", "show", str(vid), "-o", "json", **as_ada).stdout)
    assert [(f["path"], f["bytes"]) for f in shown["file_list"]] == [
        ("extra/new.txt", 3),
        ("tables/empty.txt", 0),
        ("tables/ids.bin", 3 << 20),
        ("words.txt", 6),
    ]
    assert shown["files"] == 4

    out = tmp_path / "down"
    server.cli("volume", "download", str(vid), "-d", str(out), **as_ada)
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == [f["path"] for f in shown["file_list"]]
    assert (out / "tables/ids.bin").read_bytes() == (src / "tables/ids.bin").read_bytes()
    assert (out / "words.txt").read_bytes() == b"gamma\n"
    assert (out / "tables/empty.txt").read_bytes() == b""

    listed = json.loads(server.cli("volume", "ls", "-o", "json", **as_ada).stdout)
    assert [v["id"] for v in listed] == [vid]
    server.cli("volume", "rm", str(vid), "--yes", **as_ada)
    assert json.loads(server.cli("volume", "ls", "-o", "json", **as_ada).stdout) == []
    assert _stored(server, "vol-a", vid) == []


def test_bad_input_over_http(
    server: Server, ada: dict[str, Any], tenant: Callable[..., Any], tmp_path: Path
) -> None:
    tenant("vol-b")
    mine = server.client(token=ada["token"], tenant="vol-a")
    theirs = server.client(tenant="vol-b")  # the admin, acting in vol-b
    vid = mine.volumes.create("v")["id"]
    other = theirs.volumes.create("v")["id"]  # same name, another tenant: fine
    theirs.volumes.put_file(other, "secret.txt", iter([b"theirs"]), 6)

    # Another tenant's volume is exactly as missing as one that never existed.
    api = f"{server.api_url}/api/v1"
    auth = {"Authorization": f"Bearer {ada['token']}", "X-Ncloud-Tenant": "vol-a"}
    for route in (f"/volumes/{other}", f"/volumes/{other}/files/secret.txt"):
        found = httpx.get(api + route, headers=auth)
        assert (found.status_code, found.json()) == (
            404,
            {"code": "not_found", "message": f"no volume {other}"},
        )
    missing = httpx.get(f"{api}/volumes/99999", headers=auth)
    assert missing.json() == {"code": "not_found", "message": "no volume 99999"}
    with pytest.raises(NotFound):
        mine.volumes.remove(other)
    assert theirs.volumes.show(other)["files"] == 1

    # Path escapes in the PUT path.
    put = {**auth, "Content-Type": "application/octet-stream"}
    for route in ("..%2F..%2Fescape.txt", "a/..%2F..%2F..%2Fescape.txt", "%2Fetc%2Fpasswd"):
        bad = httpx.put(f"{api}/volumes/{vid}/files/{route}", headers=put, content=b"evil")
        assert bad.status_code == 422 and bad.json()["code"] == "invalid_input", route
    assert _stored(server, "vol-a", vid) == []

    # A file over NCLOUD_MAX_FILE_BYTES is refused from its Content-Length, before any byte.
    status, body = _put_declaring(api, f"/volumes/{vid}/files/big.bin", put, 1 << 40)
    assert status == 413 and json.loads(body)["code"] == "payload_too_large"
    assert mine.volumes.show(vid)["file_list"] == [] and _stored(server, "vol-a", vid) == []

    # Names: duplicates 409, bad names 422, no token 401.
    with pytest.raises(Conflict, match="exists already"):
        mine.volumes.create("v")
    with pytest.raises(InvalidInput, match="1-64 characters"):
        mine.volumes.create("no/slashes")
    assert httpx.get(f"{api}/volumes").status_code == 401
    assert httpx.put(f"{api}/volumes/{vid}/files/a.txt", content=b"x").status_code == 401

    # A link out of the folder: exit 1 naming it, nothing created.
    src = _tree(tmp_path / "linked", {"ok.txt": b"ok"})
    (tmp_path / "private").write_bytes(b"private")
    (src / "leak").symlink_to(tmp_path / "private")
    proc = server.cli(
        "volume",
        "upload",
        str(src),
        "--name",
        "linked",
        token=ada["token"],
        tenant="vol-a",
        check=False,
    )
    assert proc.returncode == 1 and "leak is a link that leaves" in proc.stderr
    assert [v["name"] for v in mine.volumes.list()] == ["v"]

    # A tenant with volumes cannot be removed without --force.
    rm = server.cli("tenant", "rm", "vol-b", "--yes", check=False)
    assert rm.returncode == 1 and "still has 1 volumes" in rm.stderr
    server.cli("tenant", "rm", "vol-b", "--yes", "--force")
    mine.volumes.remove(vid)


def _put_declaring(api: str, route: str, headers: dict[str, str], length: int) -> tuple[int, str]:
    """A PUT that declares length bytes and sends none: the answer must not wait for them."""
    url = urlsplit(api + route)
    lines = [f"PUT {url.path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = b""
        while b"\r\n\r\n" not in reply or not _complete(reply):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def test_an_archive_into_a_volume_adds_its_files_or_none(
    server: Server, ada: dict[str, Any]
) -> None:
    mine = server.client(token=ada["token"], tenant="vol-a")
    vid = mine.volumes.create("packed")["id"]
    mine.volumes.put_file(vid, "cfg", iter([b"a file"]), 6)
    route = f"/volumes/{vid}/files"
    for body, said in (
        (tar_of([("ok.txt", b"ok"), ("evil", "->/etc/shadow")]), "only regular files"),
        (tar_of([("ok.txt", b"ok"), ("cfg/inner.txt", b"x")]), "has a file 'cfg'"),
        (tar_of([("ok.txt", b"ok"), ("a/../../x.txt", b"x")]), "leaves the volume"),
    ):
        with pytest.raises((InvalidInput, Conflict), match=said):
            mine.post_archive(route, body)
        assert _stored(server, "vol-a", vid) == ["cfg"]
    found = mine.post_archive(route, tar_of([("ok.txt", b"ok"), ("deep/er/x.bin", b"\0" * 100)]))
    assert (found["files"], found["bytes"]) == (2, 102)
    assert found["volume"]["files"] == 3 and found["volume"]["bytes"] == 108
    assert _stored(server, "vol-a", vid) == ["cfg", "deep/er/x.bin", "ok.txt"]
