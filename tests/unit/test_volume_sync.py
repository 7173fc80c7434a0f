"""A run's volume pulled to disk and pushed back: only what the run changed goes back, and
pushing reads nothing from storage. Real SQLite store, real local storage."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cluster.core import accounts, storage
from cluster.core.store import Store
from jobs.sandbox import outputs
from jobs.volumes import state as volumes
from jobs.volumes import sync as volume_sync
from ncloud.errors import InvalidInput


def _stored(tenant: str, volume_id: int, name: str) -> bytes:
    return storage.read_bytes(storage.join(volumes.volume_url(tenant, volume_id), name))


def test_pull_then_push_sends_back_only_new_and_changed_files(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts.create_tenant(store, "lab", 1, 0, 0)
    v = volumes.create_volume(store, "lab", "vocab")
    for name, data in (("a.txt", b"alpha"), ("sub/b.txt", b"beta"), ("c.txt", b"gamma")):
        volumes.put_file(store, "lab", v.id, name, [data])

    local = tmp_path / "run"
    pulled = volume_sync.pull(store, "lab", v.id, local)
    assert sorted(pulled) == ["a.txt", "c.txt", "sub/b.txt"]
    assert (local / "sub" / "b.txt").read_bytes() == b"beta"
    assert pulled["a.txt"].size == 5

    # the run: leaves a.txt alone, touches b.txt without changing it, rewrites c.txt with
    # other bytes of the same length, adds d.txt
    later = pulled["c.txt"].mtime_ns + 5_000_000_000
    os.utime(local / "sub" / "b.txt", ns=(later, later))
    (local / "c.txt").write_bytes(b"GAMMA")
    os.utime(local / "c.txt", ns=(later, later))
    (local / "d.txt").write_bytes(b"delta")

    def no_reads(*args: object, **kwargs: object) -> None:
        raise AssertionError("push read a stored file")

    monkeypatch.setattr(storage, "read_chunks", no_reads)
    monkeypatch.setattr(storage, "read_bytes", no_reads)
    assert volume_sync.push(store, "lab", v.id, local, pulled) == 2
    monkeypatch.undo()

    assert _stored("lab", v.id, "c.txt") == b"GAMMA"
    assert _stored("lab", v.id, "d.txt") == b"delta"
    assert _stored("lab", v.id, "a.txt") == b"alpha"
    assert sorted(volumes.list_volume_files(store, "lab", v.id)) == [
        "a.txt",
        "c.txt",
        "d.txt",
        "sub/b.txt",
    ]


def test_changed_decides_from_size_mtime_and_then_the_hash(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"same")
    st = f.stat()
    was = volume_sync.Pulled(st.st_size, st.st_mtime_ns, hashlib.sha256(b"same").hexdigest())

    def changed() -> bool:
        (found,) = outputs.walk(tmp_path)
        return volume_sync.changed(tmp_path, found, was)

    (found,) = outputs.walk(tmp_path)
    assert volume_sync.changed(tmp_path, found, None)  # never pulled: new
    assert not changed()  # as pulled
    os.utime(f, ns=(st.st_mtime_ns + 10**9, st.st_mtime_ns + 10**9))
    assert not changed()  # touched, same bytes
    f.write_bytes(b"SAME")
    os.utime(f, ns=(st.st_mtime_ns + 2 * 10**9, st.st_mtime_ns + 2 * 10**9))
    assert changed()  # same size, other bytes
    f.write_bytes(b"longer")
    assert changed()  # other size


def test_the_walk_skips_links_and_fifos_a_run_left(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the Ray token")
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    (volume / "sub" / "ok.txt").write_text("mine")
    (volume / "link").symlink_to(secret)
    (volume / "dirlink").symlink_to(tmp_path)
    os.mkfifo(volume / "fifo")
    assert [f.name for f in outputs.walk(volume)] == ["sub/ok.txt"]
    with pytest.raises(InvalidInput, match="not a regular file"):
        outputs.read(volume, "link", 100)
    with pytest.raises(OSError):
        outputs.read(volume, "dirlink/secret", 100)
    with pytest.raises(InvalidInput, match="not a regular file"):
        outputs.read(volume, "fifo", 100)
