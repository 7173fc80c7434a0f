"""Storage that cannot take a request is a clear 503 or 507, never a 500 or a half-kept file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.core import storage
from ncloud.errors import StorageFull
from tests.s3 import free_port

ROOT = Path(__file__).resolve().parents[2]

# Reads an s3:// manifest as the link route does and prints what the caller would be told.
_READ_LINK = """
import json
from cluster.core import storage
from ncloud.manifest import read_manifest
try:
    read_manifest("s3://bucket/key.tsv", max_bytes=1 << 20)
except Exception as exc:
    told = storage.storage_error(exc)
    print(json.dumps(None if told is None else [told.http_status, told.code, told.message]))
"""


def _link_error(tmp_path: Path, **env: str) -> list[object]:
    """What a server with exactly `env` (no ~/.aws, no instance metadata) answers a link."""
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    clean.update(AWS_EC2_METADATA_DISABLED="true", NCLOUD_HOME=str(tmp_path / "home"), **env)
    done = subprocess.run(
        [sys.executable, "-c", _READ_LINK], env=clean, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    told = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(told, list), done.stdout
    return told


def test_s3_without_credentials_is_503_naming_what_is_missing(tmp_path: Path) -> None:
    status, code, message = _link_error(tmp_path)
    assert (status, code) == (503, "unavailable")
    assert "no AWS credentials" in str(message) and "AWS_ACCESS_KEY_ID" in str(message)


def test_s3_it_cannot_reach_is_503_naming_the_endpoint(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    status, code, message = _link_error(
        tmp_path, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", NCLOUD_S3_ENDPOINT_URL=endpoint
    )
    assert (status, code) == (503, "unavailable")
    assert f"cannot reach S3 at {endpoint}" in str(message)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only: skipped where mounting is not allowed)."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=30)


def test_a_write_that_fills_the_disk_is_storage_full_and_keeps_nothing(small_disk: Path) -> None:
    chunks = (b"x" * (256 << 10) for _ in range(8))  # 2 MiB onto 1 MiB
    with pytest.raises(StorageFull, match="storage is full"):
        storage.write_stream(str(small_disk / "big.bin"), chunks, max_bytes=4 << 20)
    assert list(small_disk.iterdir()) == []
    assert storage.write_stream(str(small_disk / "ok.bin"), [b"fits"], max_bytes=16) == 4
    assert storage.list_files(str(small_disk)) == {"ok.bin": 4}
