"""Manifest parsing, column typing and row path safety (no Ray, real files and memory://)."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest

from ncloud.errors import InvalidInput
from ncloud.manifest import (
    ColumnType,
    ManifestRow,
    file_columns,
    parse_manifest,
    read_manifest,
    resolve_path,
)

FILE, STRING, INT, FLOAT = (
    ColumnType.FILE,
    ColumnType.STRING,
    ColumnType.ASCII_INT,
    ColumnType.ASCII_FLOAT,
)
ROOT = "memory://tenant-a/datasets/d1"


def test_typed_tsv_skips_comments_and_blank_lines() -> None:
    m = parse_manifest(b"@FILE\t@ASCII_INT\nimg/0.jpg\t3\n# a comment\n\nimg/1.jpg\t4\n", ROOT)
    assert m.columns == (FILE, INT)
    assert m.rows == (ManifestRow(2, ("img/0.jpg", "3")), ManifestRow(5, ("img/1.jpg", "4")))
    assert m.root == ROOT
    assert file_columns(m) == [0]


def test_crlf_and_bom_are_accepted() -> None:
    m = parse_manifest(b"\xef\xbb\xbf@FILE\t@STRING\r\na.jpg\tcat\r\nb.jpg\tdog\r\n", ROOT)
    assert m.columns == (FILE, STRING)
    assert [r.cells for r in m.rows] == [("a.jpg", "cat"), ("b.jpg", "dog")]
    csv_form = parse_manifest(b"\xef\xbb\xbfimage,label\r\na.jpg,1\r\n", ROOT)
    assert csv_form.columns == (FILE, INT)
    assert csv_form.rows == (ManifestRow(2, ("a.jpg", "1")),)


def test_unknown_type_is_named() -> None:
    with pytest.raises(InvalidInput, match=r'manifest line 1: unknown column type "@IMAGE"'):
        parse_manifest(b"@FILE\t@IMAGE\na.jpg\tx\n", ROOT)


@pytest.mark.parametrize("text", [b"", b"\n\n", b"# only a comment\r\n"])
def test_empty_manifest(text: bytes) -> None:
    with pytest.raises(InvalidInput, match="manifest is empty"):
        parse_manifest(text, ROOT)


@pytest.mark.parametrize("text", [b"@FILE\t@ASCII_INT\n", b"image,label\n\n"])
def test_header_only(text: bytes) -> None:
    with pytest.raises(InvalidInput, match=r"has a header \(line 1\) but no rows"):
        parse_manifest(text, ROOT)


def test_wrong_column_count_names_the_line() -> None:
    with pytest.raises(InvalidInput, match="manifest line 3: 1 columns, but the header"):
        parse_manifest(b"@FILE\t@ASCII_INT\na.jpg\t1\nb.jpg\n", ROOT)
    with pytest.raises(InvalidInput, match="manifest line 4: 3 columns"):
        parse_manifest(b"image,label\na.jpg,1\n\nb.jpg,1,2\n", ROOT)


def test_non_utf8_names_the_line() -> None:
    with pytest.raises(InvalidInput, match="manifest line 3: byte 0xff at column 1 is not UTF-8"):
        parse_manifest(b"@STRING\nok\n\xff\xfe\n", ROOT)


def test_non_integer_in_ascii_int_column() -> None:
    with pytest.raises(InvalidInput, match=r'manifest line 3: "cat" is not an integer'):
        parse_manifest(b"@FILE\t@ASCII_INT\na.jpg\t1\nb.jpg\tcat\n", ROOT)


def test_non_number_in_ascii_float_column() -> None:
    with pytest.raises(InvalidInput, match=r'manifest line 2: "nan" is not a finite number'):
        parse_manifest(b"@ASCII_FLOAT\t@ASCII_INT\nnan\t1\n", ROOT)


def test_second_header_and_headerless_tsv_are_refused() -> None:
    with pytest.raises(InvalidInput, match="manifest line 3: a second header"):
        parse_manifest(b"@FILE\n a.jpg\n@FILE\n", ROOT)
    with pytest.raises(InvalidInput, match="need a header line such as @FILE"):
        parse_manifest(b"a.jpg\t1\n", ROOT)


def test_csv_with_header_types_columns() -> None:
    m = parse_manifest(b"filename,label\nimg/a.jpg,cat\nimg/b.jpg, dog\n", ROOT)
    assert m.columns == (FILE, STRING)
    assert m.rows[1].cells == ("img/b.jpg", "dog")
    text = parse_manifest(b'text,label\n"hello, world",pos\nbad film,neg\n', ROOT)
    assert text.columns == (STRING, STRING)
    assert text.rows[0] == ManifestRow(2, ("hello, world", "pos"))
    features = parse_manifest(b"f0,f1,label\n0.5,1,1\n-2e3,3,0\n", ROOT)
    assert features.columns == (FLOAT, FLOAT, INT)


def test_csv_without_header_is_data_from_line_one() -> None:
    labels = parse_manifest(b"img/a.jpg,3\nimg/b.jpg,4\n", ROOT)
    assert labels.columns == (FILE, INT)
    assert labels.rows[0] == ManifestRow(1, ("img/a.jpg", "3"))
    aeon = parse_manifest(b"img/a.jpg,labels/a.txt\nimg/b.jpg,labels/b.txt\n", ROOT)
    assert aeon.columns == (FILE, FILE)
    assert len(aeon.rows) == 2
    assert file_columns(aeon) == [0, 1]


def test_bad_csv_quoting_names_the_line() -> None:
    with pytest.raises(InvalidInput, match="manifest line 2: bad CSV quoting"):
        parse_manifest(b'text,label\n"unterminated,pos\n', ROOT)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../x.jpg", "leaves the manifest root"),
        ("img/../../x.jpg", "leaves the manifest root"),
        ("..\\secret.txt", "leaves the manifest root"),
        ("/etc/passwd", "is an absolute path"),
        ("C:\\x.jpg", "is an absolute path"),
        ("\\\\server\\share\\x.jpg", "is an absolute path"),
        ("file:///etc/passwd", "is a URL"),
        ("http://169.254.169.254/latest", "is a URL"),
        ("s3://other-bucket/x.jpg", "is a URL"),
        ("memory://tenant-b/x.jpg", "is a URL"),
        ("a::b", "is a chained URL"),
        ("simplecache::s3://b/k.jpg", "is a chained URL"),
        ("file:/etc/passwd", 'contains ":"'),
        ("a\x00b.jpg", "contains a control character"),
        ("a\x1b[31mb.jpg", "contains a control character"),
        ("", "empty path"),
        ("img/..", "names the manifest root"),
    ],
)
def test_unsafe_paths_are_refused(path: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match="manifest line 17: ") as caught:
        resolve_path(ROOT, path, 17)
    assert reason in str(caught.value)
    assert "\x00" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_escape_message_matches_house_style() -> None:
    with pytest.raises(InvalidInput) as caught:
        resolve_path("/srv/data", "../x.jpg", 17)
    assert str(caught.value) == 'manifest line 17: path "../x.jpg" leaves the manifest root'


@pytest.mark.parametrize(
    "path", ["../x.jpg", "/etc/passwd", "file:///etc/passwd", "http://h/x.jpg", "a::b"]
)
def test_parse_refuses_unsafe_rows(path: str) -> None:
    text = f"@FILE\t@ASCII_INT\nok.jpg\t0\n{path}\t1\n".encode()
    with pytest.raises(InvalidInput, match="manifest line 3: path"):
        parse_manifest(text, ROOT)


@pytest.mark.parametrize(
    ("root", "path", "expected"),
    [
        ("memory://ds", "img/./a.jpg", "memory://ds/img/a.jpg"),
        ("memory://ds/", "a/../b.jpg", "memory://ds/b.jpg"),
        ("/data/ds", "x\\y.jpg", "/data/ds/x/y.jpg"),
        ("s3://bucket/t1/ds", " img//a b.jpg ", "s3://bucket/t1/ds/img/a b.jpg"),
        ("memory://", "a.jpg", "memory://a.jpg"),
    ],
)
def test_resolve_path_normalises(root: str, path: str, expected: str) -> None:
    assert resolve_path(root, path, 1) == expected


def test_read_manifest_from_memory_defaults_root_to_its_folder() -> None:
    folder = f"memory://t-{uuid.uuid4().hex}/ds"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{folder}/manifest.tsv", b"@FILE\t@ASCII_INT\na.png\t0\n")
    m = read_manifest(f"{folder}/manifest.tsv")
    assert m.root == folder
    assert m.columns == (FILE, INT)
    assert read_manifest(f"{folder}/manifest.tsv", root="memory://elsewhere").root == (
        "memory://elsewhere"
    )


def test_read_manifest_from_local_file(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b"image,label\nimg/a.jpg,cat\n")
    m = read_manifest(str(tmp_path / "m.csv"))
    assert m.root == str(tmp_path)
    assert m.rows[0].cells == ("img/a.jpg", "cat")


def test_read_manifest_missing_and_too_large(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not found"):
        read_manifest(str(tmp_path / "nope.csv"))
    (tmp_path / "m.csv").write_bytes(b"image,label\n" + b"a.jpg,1\n" * 100)
    with pytest.raises(InvalidInput, match="over the 100 byte limit"):
        read_manifest(str(tmp_path / "m.csv"), max_bytes=100)
