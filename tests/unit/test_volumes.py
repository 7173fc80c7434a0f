"""Volumes without Ray: jobs.volumes.state on a real SQLite store and local storage, and
collecting a folder to upload (the API and CLI over them: test_volumes_api.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.control import schema
from cluster.core import accounts, storage
from cluster.core.store import Store
from jobs.volumes import state as volumes
from ncloud.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from ncloud.settings import settings
from ncloud.uploads import collect_folder
from tests.unit.conftest import make_folder, volume_files

# -- jobs.volumes.state ----------------------------------------------------------------------------


def test_create_list_show_and_duplicates(tenants: Store) -> None:
    v = volumes.create_volume(tenants, "vision", "vocab")
    assert (v.name, v.files, v.bytes, v.tenant) == ("vocab", 0, 0, "vision")
    with pytest.raises(Conflict, match="volume 'vocab' exists already"):
        volumes.create_volume(tenants, "vision", "vocab")
    other = volumes.create_volume(tenants, "audio", "vocab")  # names are per tenant
    assert [x.id for x in volumes.list_volumes(tenants, "vision")] == [v.id]
    assert [x.id for x in volumes.list_volumes(tenants, "audio")] == [other.id]
    assert volumes.get_volume(tenants, "vision", v.id) == v


@pytest.mark.parametrize("name", ["", "has space", "a/b", "-x", "x" * 65, "../up"])
def test_bad_names_are_refused_and_nothing_is_stored(tenants: Store, name: str) -> None:
    with pytest.raises(InvalidInput, match="1-64 characters"):
        volumes.create_volume(tenants, "vision", name)
    assert volumes.list_volumes(tenants, "vision") == []


def test_another_tenants_volume_reads_as_missing(tenants: Store) -> None:
    v = volumes.create_volume(tenants, "audio", "secret")
    volumes.put_file(tenants, "audio", v.id, "k.txt", [b"key"])
    calls: list[Callable[[], Any]] = [
        lambda: volumes.get_volume(tenants, "vision", v.id),
        lambda: volumes.list_volume_files(tenants, "vision", v.id),
        lambda: volumes.open_file(tenants, "vision", v.id, "k.txt"),
        lambda: volumes.put_file(tenants, "vision", v.id, "k.txt", [b"x"]),
        lambda: volumes.remove_file(tenants, "vision", v.id, "k.txt"),
        lambda: volumes.delete_volume(tenants, "vision", v.id),
    ]
    for call in calls:
        with pytest.raises(NotFound) as info:
            call()
        assert str(info.value) == f"no volume {v.id}"
    with pytest.raises(NotFound) as missing:
        volumes.get_volume(tenants, "vision", 999)
    assert str(missing.value) == "no volume 999"
    assert volumes.get_volume(tenants, "audio", v.id).files == 1
    size, chunks = volumes.open_file(tenants, "audio", v.id, "k.txt")
    assert (size, b"".join(chunks)) == (3, b"key")


def test_put_replace_nested_and_counts(tenants: Store) -> None:
    v = volumes.create_volume(tenants, "vision", "tables")
    volumes.put_file(tenants, "vision", v.id, "a.txt", [b"hello"])
    after = volumes.put_file(tenants, "vision", v.id, "sub/dir/b.bin", [b"\x00" * 10, b"\x01"])
    assert (after.files, after.bytes) == (2, 16)
    replaced = volumes.put_file(tenants, "vision", v.id, "a.txt", [b"hi"])
    assert (replaced.files, replaced.bytes) == (2, 13)
    assert replaced.updated_at >= v.updated_at
    assert volumes.list_volume_files(tenants, "vision", v.id) == {"a.txt": 2, "sub/dir/b.bin": 11}
    # Backslashes and "." segments are canonicalised, so this replaces sub/dir/b.bin.
    volumes.put_file(tenants, "vision", v.id, "sub\\./dir/b.bin", [b"z"])
    assert volumes.list_volume_files(tenants, "vision", v.id)["sub/dir/b.bin"] == 1


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("../x", "leaves the volume"),
        ("a/../../x", "leaves the volume"),
        ("/etc/passwd", "absolute path"),
        ("s3://bucket/key", "URL"),
        ("file:///etc/passwd", "URL"),
        ("", "empty"),
        (".", "names the volume"),
        ("a:b", "absolute|:"),
        ("ctl\x01x", "control character"),
        ("x.part-1234", "reserved"),
        ("d/" + "y" * 300, "too long"),
    ],
)
def test_path_escapes_are_refused_before_anything_is_written(
    tenants: Store, path: str, match: str
) -> None:
    v = volumes.create_volume(tenants, "vision", "v")
    with pytest.raises(InvalidInput, match=match):
        volumes.put_file(tenants, "vision", v.id, path, [b"evil"])
    assert volume_files("vision") == []
    assert not (Path(settings().storage) / "etc").exists()
    assert volumes.get_volume(tenants, "vision", v.id).files == 0


def test_file_and_folder_clashes_are_conflicts(tenants: Store) -> None:
    v = volumes.create_volume(tenants, "vision", "v")
    volumes.put_file(tenants, "vision", v.id, "a", [b"1"])
    volumes.put_file(tenants, "vision", v.id, "d/x", [b"2"])
    with pytest.raises(Conflict, match="has a file 'a'"):
        volumes.put_file(tenants, "vision", v.id, "a/b", [b"3"])
    with pytest.raises(Conflict, match="has a folder 'd'"):
        volumes.put_file(tenants, "vision", v.id, "d", [b"4"])
    assert volumes.list_volume_files(tenants, "vision", v.id) == {"a": 1, "d/x": 1}


def test_over_the_limit_leaves_nothing_behind(tenants: Store) -> None:
    v = volumes.create_volume(tenants, "vision", "v")
    volumes.put_file(tenants, "vision", v.id, "big.bin", [b"old"])
    with pytest.raises(PayloadTooLarge, match="over the"):
        volumes.put_file(tenants, "vision", v.id, "big.bin", [b"x" * 60, b"x" * 60], max_bytes=100)
    with pytest.raises(PayloadTooLarge):
        volumes.put_file(tenants, "vision", v.id, "new.bin", iter([b"x" * 101]), max_bytes=100)
    assert volume_files("vision") == [f"{v.id}/big.bin"]  # no .part-* left, old file intact
    size, chunks = volumes.open_file(tenants, "vision", v.id, "big.bin")
    assert size == 3
    assert b"".join(chunks) == b"old"
    assert volumes.get_volume(tenants, "vision", v.id).files == 1


def test_remove_file_and_missing_file_messages(tenants: Store) -> None:
    v = volumes.create_volume(tenants, "vision", "v")
    volumes.put_file(tenants, "vision", v.id, "keep.txt", [b"k"])
    volumes.put_file(tenants, "vision", v.id, "sub/go.txt", [b"gone"])
    after = volumes.remove_file(tenants, "vision", v.id, "sub/go.txt")
    assert (after.files, after.bytes) == (1, 1)
    for call in (volumes.open_file, volumes.remove_file):
        with pytest.raises(NotFound) as info:
            call(tenants, "vision", v.id, "sub/go.txt")
        # The message names the file in the user's words, never the storage URL.
        assert str(info.value) == f"no file 'sub/go.txt' in volume {v.id}"
    with pytest.raises(NotFound, match="no file 'sub'"):
        volumes.remove_file(tenants, "vision", v.id, "sub")  # a folder is not a file


def test_delete_removes_storage_and_ids_are_never_reused(tenants: Store) -> None:
    v = volumes.create_volume(tenants, "vision", "v")
    volumes.put_file(tenants, "vision", v.id, "a/b.txt", [b"x"])
    assert Path(volumes.volume_url("vision", v.id)).is_dir()
    assert volumes.delete_volume(tenants, "vision", v.id).name == "v"
    assert not Path(volumes.volume_url("vision", v.id)).exists()
    with pytest.raises(NotFound):
        volumes.get_volume(tenants, "vision", v.id)
    again = volumes.create_volume(tenants, "vision", "v")  # the name is free again
    assert again.id > v.id and again.files == 0


def test_a_file_written_after_its_volume_was_removed_goes_too(tenants: Store) -> None:
    v = volumes.create_volume(tenants, "vision", "v")
    name, url = volumes.file_url(tenants, "vision", v.id, "late.txt")
    storage.write_stream(url, [b"late"], 100)
    with tenants.write() as conn:
        conn.execute(volumes.volumes.delete())
    with pytest.raises(NotFound):
        volumes.record_file(tenants, "vision", v.id, name)
    assert volume_files("vision") == []


def test_tenant_rm_refuses_while_volumes_exist(tenants: Store) -> None:
    assert volumes.volumes in schema.TENANT_TABLES
    volumes.create_volume(tenants, "vision", "v")
    with pytest.raises(Conflict, match="still has 1 volumes"):
        schema.delete_tenant(tenants, "vision", force=False)
    schema.delete_tenant(tenants, "vision", force=True)
    assert not accounts.tenant_exists(tenants, "vision")


# -- collecting a folder ---------------------------------------------------------------------


def test_collect_skips_dotfiles_and_keeps_links_inside(tmp_path: Path) -> None:
    root = make_folder(
        tmp_path / "vocab",
        {"words.txt": b"a\nb\n", "sub/ids.tsv": b"1\t2\n", ".secret": b"x", ".git/HEAD": b"ref"},
    )
    (root / "alias.txt").symlink_to(root / "words.txt")
    found = collect_folder(root)
    assert sorted(name for _, name in found) == ["alias.txt", "sub/ids.tsv", "words.txt"]


def test_collect_refuses_a_link_that_leaves_themake_folder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "vocab", {"ok.txt": b"ok"})
    (tmp_path / "outside.txt").write_bytes(b"private")
    (root / "escape.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(InvalidInput, match=r"escape\.txt is a link that leaves"):
        collect_folder(root)
