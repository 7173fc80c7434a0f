"""Datasets over the real server: upload -> ingest -> Ready, bad rows, resume, isolation."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.digits import make_digits
from jobs.datasets.loader import ShardLoader
from ncloud.errors import Conflict, InvalidInput, NotFound
from tests.archives import tar_of
from tests.integration.conftest import Server


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    make_digits(out, size=16)
    return out


@pytest.fixture
def team(server: Server, tenant: Callable[..., Any]) -> Iterator[dict[str, str]]:
    """A tenant with one user; returns {"tenant", "token"}."""
    name = f"data{len(server.client().tenants.list())}"
    tenant(name, cpus=1)
    user = server.client().users.add(f"{name}@example.com", [name])
    yield {"tenant": name, "token": user["token"]}
    server.client().users.remove(f"{name}@example.com")


def test_upload_ingest_ready_and_loader_reads_it(
    server: Server, team: dict[str, str], digits: Path
) -> None:
    out = server.cli(
        "dataset",
        "upload",
        str(digits / "train.tsv"),
        "--name",
        "digits",
        "-o",
        "json",
        token=team["token"],
        tenant=team["tenant"],
    )
    found = json.loads(out.stdout)
    assert found["status"] == "Ready" and found["rows"] == 1430
    assert found["classes"] == sorted(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    assert sum(found["class_counts"].values()) == 1430 and found["shape"] == [16, 16, 1]
    assert "ncloud dataset show" in out.stderr  # next steps
    listed = json.loads(
        server.cli("dataset", "ls", "-o", "json", token=team["token"], tenant=team["tenant"]).stdout
    )
    assert [d["name"] for d in listed] == ["digits"]

    ds_url = str(
        server.home / "storage" / "tenants" / team["tenant"] / "datasets" / str(found["id"])
    )
    loader = ShardLoader(ds_url, batch_size=100, shuffle_seed=1)
    batches = list(loader)
    assert sum(len(y) for _, y in batches) == 1430
    assert batches[0][0].shape[1:] == (1, 16, 16) and int(batches[0][1].max()) <= 9

    target = server.home / "downloaded"
    server.cli(
        "dataset",
        "download",
        str(found["id"]),
        "-d",
        str(target),
        token=team["token"],
        tenant=team["tenant"],
    )
    some = "train/" + sorted(p.name for p in (digits / "train").iterdir())[0]
    assert (target / "digits" / some).read_bytes() == (digits / some).read_bytes()

    server.cli(
        "dataset", "rm", str(found["id"]), "--yes", token=team["token"], tenant=team["tenant"]
    )
    assert not Path(ds_url).exists()


def test_bad_rows_go_to_error_naming_them_and_a_retry_works(
    server: Server, team: dict[str, str], tmp_path: Path, digits: Path
) -> None:
    shutil.copytree(digits / "valid", tmp_path / "valid")
    rows = (digits / "valid.tsv").read_text().splitlines()[:40]
    good = (tmp_path / rows[5].split("\t")[0]).read_bytes()
    truncated, fake = rows[5].split("\t")[0], "valid/fake.png"
    (tmp_path / truncated).write_bytes(good[: len(good) // 2])
    (tmp_path / fake).write_text("I am not a picture")
    rows.append(f"{fake}\tone")
    (tmp_path / "m.tsv").write_text("\n".join(rows) + "\n")
    failed = server.cli(
        "dataset",
        "upload",
        str(tmp_path / "m.tsv"),
        "--name",
        "broken",
        token=team["token"],
        tenant=team["tenant"],
        check=False,
    )
    assert failed.returncode == 1
    assert "line 6" in failed.stderr and "line 41" in failed.stderr  # the header is line 1
    client = server.client(token=team["token"], tenant=team["tenant"])
    broken = next(d for d in client.datasets.list() if d["name"] == "broken")
    assert broken["status"] == "Error" and broken["shards"] is None
    ds_dir = server.home / "storage" / "tenants" / team["tenant"] / "datasets" / str(broken["id"])
    assert not (ds_dir / "index.json").exists() and not (ds_dir / "shards").exists()

    (tmp_path / truncated).write_bytes(good)  # fix both files and upload again
    shutil.copy(tmp_path / truncated, tmp_path / fake)
    fixed = json.loads(
        server.cli(
            "dataset",
            "upload",
            str(tmp_path / "m.tsv"),
            "--name",
            "broken",
            "-o",
            "json",
            token=team["token"],
            tenant=team["tenant"],
        ).stdout
    )
    assert fixed["id"] == broken["id"] and fixed["status"] == "Ready" and fixed["rows"] == 40


def test_interrupted_upload_is_never_ready_and_resumes(
    server: Server, team: dict[str, str], digits: Path
) -> None:
    client = server.client(token=team["token"], tenant=team["tenant"])
    manifest = (digits / "valid.tsv").read_bytes()
    created = client.datasets.create("partial", manifest, "valid.tsv")
    assert created["status"] == "Uploading" and len(created["needed"]) == 357
    for name in created["needed"][:100]:
        data = (digits / name).read_bytes()
        client.datasets.put_file(created["id"], name, iter([data]), len(data))
    with pytest.raises(InvalidInput, match="257 files named by the manifest are not uploaded"):
        client.datasets.ingest(created["id"])
    assert client.datasets.show(created["id"])["status"] == "Uploading"
    done = server.cli(
        "dataset",
        "upload",
        str(digits / "valid.tsv"),
        "--name",
        "partial",
        "-o",
        "json",
        token=team["token"],
        tenant=team["tenant"],
    )
    assert "100 of 357 files are there already" in done.stderr
    assert json.loads(done.stdout)["status"] == "Ready"


@pytest.mark.parametrize(
    "row",
    [
        "../escape.png\tone",
        "/etc/passwd\tone",
        "file:///etc/passwd\tone",
        "http://x/y.png\tone",
        "memory://x.png\tone",
        "a::b.png\tone",
    ],
)
def test_manifest_rows_that_escape_are_422_and_store_nothing(
    server: Server, team: dict[str, str], row: str
) -> None:
    client = server.client(token=team["token"], tenant=team["tenant"])
    with pytest.raises(InvalidInput, match="line 2"):
        client.datasets.create("escape", f"@FILE\t@STRING\n{row}\n".encode(), "m.tsv")
    assert all(d["name"] != "escape" for d in client.datasets.list())


def test_cli_refuses_a_symlink_leaving_the_root(
    server: Server, team: dict[str, str], tmp_path: Path, digits: Path
) -> None:
    outside = tmp_path / "outside.png"
    shutil.copy(digits / "holdout" / "0000.png", outside)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").symlink_to(outside)
    (tmp_path / "data" / "m.tsv").write_text("@FILE\t@STRING\na.png\tzero\n")
    proc = server.cli(
        "dataset",
        "upload",
        str(tmp_path / "data" / "m.tsv"),
        "--name",
        "link",
        token=team["token"],
        tenant=team["tenant"],
        check=False,
    )
    assert proc.returncode == 1 and "leaves" in proc.stderr


def test_another_tenants_dataset_is_404(
    server: Server, team: dict[str, str], tenant: Callable[..., Any], digits: Path
) -> None:
    mine = server.client(token=team["token"], tenant=team["tenant"])
    created = mine.datasets.create("private", (digits / "holdout.tsv").read_bytes(), "h.tsv")
    tenant("other", cpus=1)
    theirs = server.client().users.add("eve@example.com", ["other"])
    try:
        eve = server.client(token=theirs["token"], tenant="other")
        for call in (
            lambda: eve.datasets.show(created["id"]),
            lambda: eve.datasets.remove(created["id"]),
            lambda: eve.datasets.ingest(created["id"]),
            lambda: eve.datasets.files(created["id"]),
        ):
            with pytest.raises(NotFound):
                call()
        assert mine.datasets.show(created["id"])["name"] == "private"
    finally:
        server.client().users.remove("eve@example.com")
        mine.datasets.remove(created["id"])


def _read_response(sock: socket.socket) -> str:
    """One whole HTTP response (headers and body may come in separate segments)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if not (chunk := sock.recv(65536)):
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_a_file_over_the_limit_is_refused_before_it_is_read(
    server: Server, team: dict[str, str], digits: Path
) -> None:
    client = server.client(token=team["token"], tenant=team["tenant"])
    created = client.datasets.create("huge", (digits / "holdout.tsv").read_bytes(), "h.tsv")
    port = int(server.api_url.rsplit(":", 1)[1])
    request = (
        f"PUT /api/v1/datasets/{created['id']}/files/holdout/0000.png HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {team['token']}\r\n"
        f"X-Ncloud-Tenant: {team['tenant']}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {300 << 20}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)  # headers only: the server must answer without the body
        reply = _read_response(sock)
    assert reply.startswith("HTTP/1.1 413")
    assert '"code":"payload_too_large"' in reply.replace(" ", "")
    manifest_size = (digits / "holdout.tsv").stat().st_size
    assert client.datasets.files(created["id"]) == {"h.tsv": manifest_size}
    client.datasets.remove(created["id"])


def _headers(team: dict[str, str]) -> str:
    return (
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {team['token']}\r\n"
        f"X-Ncloud-Tenant: {team['tenant']}\r\n"
    )


def test_a_manifest_over_16_mib_is_413_by_its_length_and_as_it_streams(
    server: Server, team: dict[str, str], digits: Path
) -> None:
    client = server.client(token=team["token"], tenant=team["tenant"])
    port = int(server.api_url.rsplit(":", 1)[1])
    limit = 16 << 20
    declared = (
        f"POST /api/v1/datasets?name=big HTTP/1.1\r\n{_headers(team)}"
        f"Content-Type: application/octet-stream\r\nContent-Length: {limit + 1}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(declared)  # headers only: refused by the length it declares
        reply = _read_response(sock)
    assert reply.startswith("HTTP/1.1 413") and "over the 16MiB limit" in reply, reply[:300]

    # No length declared: chunks until one byte over, then the end; refused as it streams.
    chunked = (
        f"POST /api/v1/datasets?name=big HTTP/1.1\r\n{_headers(team)}"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    row = b"a.png\tone\n" * 100_000
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(chunked + b"%x\r\n@FILE\t@STRING\n\r\n" % len(b"@FILE\t@STRING\n"))
        sent = len(b"@FILE\t@STRING\n")
        while sent <= limit:
            piece = row[: limit + 1 - sent]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        sock.sendall(b"0\r\n\r\n")
        reply = _read_response(sock)
    assert reply.startswith("HTTP/1.1 413") and "manifest is over the 16MiB limit" in reply, reply[
        :300
    ]
    assert client.datasets.list() == []


def test_a_file_the_manifest_names_but_storage_lacks_downloads_as_404(
    server: Server, team: dict[str, str], digits: Path, tmp_path: Path
) -> None:
    client = server.client(token=team["token"], tenant=team["tenant"])
    created = client.datasets.create("partial", (digits / "holdout.tsv").read_bytes(), "h.tsv")
    with pytest.raises(NotFound, match=r"no file 'holdout/0000\.png' in dataset"):
        client.datasets.download_file(created["id"], "holdout/0000.png", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    assert client.datasets.download_file(created["id"], "h.tsv", tmp_path / "h.tsv") > 0
    assert (tmp_path / "h.tsv").read_bytes() == (digits / "holdout.tsv").read_bytes()
    client.datasets.remove(created["id"])


def test_no_token_is_401(server: Server) -> None:
    assert httpx.get(f"{server.api_url}/api/v1/datasets").status_code == 401


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        (b"", "empty"),
        (b"@FILE\t@STRING\n", "no rows|header only|empty"),
        (b"@FILE\t@WEIRD\na.png\tone\n", "WEIRD"),
        (b"@FILE\t@STRING\na.png\tone\textra\n", "line 2"),
        (b"@FILE\t@ASCII_INT\na.png\tseven\n", "line 2"),
        (b"@FILE\t@STRING\n\xff\xfe.png\tone\n", "UTF-8|utf-8"),
    ],
)
def test_bad_manifests_are_422_and_store_nothing(
    server: Server, team: dict[str, str], manifest: bytes, match: str
) -> None:
    client = server.client(token=team["token"], tenant=team["tenant"])
    with pytest.raises(InvalidInput, match=match):
        client.datasets.create("bad-manifest", manifest, "m.tsv")
    assert client.datasets.list() == []


def test_crlf_and_bom_manifests_are_accepted(
    server: Server, team: dict[str, str], digits: Path
) -> None:
    client = server.client(token=team["token"], tenant=team["tenant"])
    text = (digits / "holdout.tsv").read_text().replace("\n", "\r\n")
    created = client.datasets.create("crlf", b"\xef\xbb\xbf" + text.encode(), "h.tsv")
    assert created["rows"] == 10 and len(created["needed"]) == 10
    client.datasets.remove(created["id"])


def test_a_folder_upload_finds_its_manifest_or_says_which_to_pick(
    server: Server, team: dict[str, str], digits: Path, tmp_path: Path
) -> None:
    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return server.cli(*args, token=team["token"], tenant=team["tenant"], check=check)

    several = cli("dataset", "upload", str(digits), "-n", "dir", check=False)
    assert several.returncode == 1
    assert "several manifests (holdout.tsv, train.tsv, valid.tsv): pick one with --manifest" in (
        several.stderr
    )
    (tmp_path / "empty").mkdir()
    none = cli("dataset", "upload", str(tmp_path / "empty"), "-n", "e", check=False)
    assert none.returncode == 1 and "holds no manifest (.tsv or .csv)" in none.stderr
    wrong = cli("dataset", "upload", str(digits), "-n", "w", "--manifest", "nope.tsv", check=False)
    assert wrong.returncode == 1 and "has no manifest 'nope.tsv'" in wrong.stderr
    assert all(
        d["name"] not in ("dir", "e", "w")
        for d in server.client(token=team["token"], tenant=team["tenant"]).datasets.list()
    )

    done = cli(
        "dataset", "upload", str(digits), "-n", "dir", "--manifest", "holdout.tsv", "-o", "json",
    )  # fmt: skip
    assert json.loads(done.stdout)["status"] == "Ready" and json.loads(done.stdout)["rows"] == 10
    alone = tmp_path / "alone"
    shutil.copytree(digits / "holdout", alone / "holdout")
    shutil.copy(digits / "holdout.tsv", alone / "holdout.tsv")
    only = cli("dataset", "upload", str(alone), "-n", "alone", "-o", "json")
    assert json.loads(only.stdout)["rows"] == 10


def test_an_archive_of_files_is_checked_whole_before_any_is_stored(
    server: Server, team: dict[str, str], digits: Path
) -> None:
    client = server.client(token=team["token"], tenant=team["tenant"])
    created = client.datasets.create("packed", (digits / "holdout.tsv").read_bytes(), "m.tsv")
    route = f"/datasets/{created['id']}/files"
    png = (digits / "holdout" / "0000.png").read_bytes()
    assert 50 < len(png) <= 512
    good = ("holdout/0000.png", png)
    second = (digits / "holdout" / "0001.png").read_bytes()
    full = tar_of([good, ("holdout/0001.png", second)])
    bad: list[tuple[bytes, type[Exception], str]] = [
        (tar_of([good, ("holdout/0001.png", "->/etc/passwd")]), InvalidInput, "only regular files"),
        (tar_of([good, ("../escape.png", png)]), InvalidInput, "leaves"),
        (tar_of([good, ("/etc/cron.d/x", png)]), InvalidInput, "absolute"),
        (tar_of([good, ("m.tsv", b"@FILE\n")]), Conflict, "the manifest is fixed"),
        (tar_of([good, ("holdout/0000.png", png)]), InvalidInput, "twice"),
        (tar_of([("a", png), ("a/b.png", png)]), InvalidInput, "under one of its files"),
        # cut inside the second file's bytes (after a header and a padded file, and a header)
        (full[: 512 + 512 + 512 + 50], InvalidInput, "not a readable tar archive"),
        (b"plain bytes, no tar" * 40, InvalidInput, "not a readable tar archive"),
    ]
    for body, error, said in bad:
        with pytest.raises(error, match=said):
            client.post_archive(route, body)
        assert client.datasets.files(created["id"]) == {
            "m.tsv": len((digits / "holdout.tsv").read_bytes())
        }
    stored = client.post_archive(route, full)
    assert stored == {"files": 2, "bytes": len(png) + len(second)}
    assert client.datasets.files(created["id"])["holdout/0001.png"] == len(second)
    # The rest by the CLI: only what is missing goes, then it is Ready.
    done = server.cli(
        "dataset", "upload", str(digits / "holdout.tsv"), "-n", "packed", "-o", "json",
        token=team["token"], tenant=team["tenant"],
    )  # fmt: skip
    assert "2 of 10 files are there already" in done.stderr
    assert json.loads(done.stdout)["status"] == "Ready"
