"""The client's side of uploads: which files travel packed, the archive, links refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ncloud import uploads
from ncloud.errors import InvalidInput


def _files(root: Path, sizes: dict[str, int]) -> list[tuple[Path, str]]:
    out = []
    for name, size in sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * size)
        out.append((root / name, name))
    return out


def test_small_files_are_packed_by_bytes_and_count_and_large_ones_go_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads, "PACK_BYTES", 1000)
    monkeypatch.setattr(uploads, "PACK_FILES", 3)
    monkeypatch.setattr(uploads, "PACK_BELOW", 500)
    files = _files(tmp_path, {"a": 400, "b": 400, "big": 600, "c": 300, "d": 100, "e": 100, "f": 1})
    jobs = uploads.plan(files, packed=True)
    assert [([n for _, n in batch], size, p) for batch, size, p in jobs] == [
        (["big"], 600, False),
        (["a", "b"], 800, True),  # c would pass 1,000 bytes
        (["c", "d", "e"], 500, True),  # f would be a fourth file
        (["f"], 1, True),
    ]
    alone = uploads.plan(files, packed=False)
    assert [(len(b), p) for b, _, p in alone] == [(1, False)] * 7


def test_the_archive_holds_each_file_as_a_plain_regular_file(tmp_path: Path) -> None:
    files = _files(tmp_path, {"img/0.png": 10, "img/deeper/1.png": 20})
    with tarfile.open(fileobj=io.BytesIO(uploads.pack(files))) as tar:
        members = tar.getmembers()
        assert [(m.name, m.size, m.isreg(), m.mode) for m in members] == [
            ("img/0.png", 10, True, 0o644),
            ("img/deeper/1.png", 20, True, 0o644),
        ]
        assert {(m.uid, m.uname) for m in members} == {(0, "")}  # no account of the uploader
        handle = tar.extractfile(members[1])
        assert handle is not None and handle.read() == b"x" * 20


def test_a_manifest_naming_a_file_through_a_folder_link_out_of_its_folder_is_refused(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    _files(outside, {"a.png": 5})
    data = tmp_path / "data"
    data.mkdir()
    (data / "sub").symlink_to(outside)
    (data / "m.tsv").write_text("@FILE\t@STRING\nsub/a.png\tzero\n")
    with pytest.raises(InvalidInput, match="leaves"):
        uploads.manifest_files(data / "m.tsv")
    (data / "sub").unlink()
    _files(data, {"sub/a.png": 5, "inside.png": 7})
    (data / "link.png").symlink_to(data / "inside.png")  # a link that stays inside: followed
    (data / "m.tsv").write_text("@FILE\t@STRING\nsub/a.png\tzero\nlink.png\tone\nnope.png\tone\n")
    found, missing = uploads.manifest_files(data / "m.tsv")
    assert sorted(n for _, n in found) == ["link.png", "sub/a.png"] and missing == ["nope.png"]
