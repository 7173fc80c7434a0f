"""Aeon-style dataset manifests: parse CSV/TSV, type the columns, keep row paths under the root.

Formats (UTF-8, an optional BOM, LF or CRLF; blank lines and lines starting ``#`` are skipped;
line numbers in messages are physical lines of the file, counting from 1):

- Tab-separated with a typed header, e.g. ``@FILE<TAB>@ASCII_INT``. Types: ``@FILE``,
  ``@STRING``, ``@ASCII_INT``, ``@ASCII_FLOAT``. Cells are kept exactly as written.
- Comma-separated (RFC 4180 quoting, one record per line, cells stripped). The first line is
  a header when none of its cells is a number or looks like a path (contains ``/`` or ``\\``
  or ends in a known file extension); so a header-less CSV must start with a row that names
  a file or holds a number, and an inline-text CSV always needs a header (``text,label``).
  Column types: a header named image/img/file/filename/path/audio is ``FILE`` and one named
  text/sentence/caption is ``STRING``; otherwise by the values: all integers -> ``ASCII_INT``
  in the last column of two or more (``ASCII_FLOAT`` elsewhere), all numbers ->
  ``ASCII_FLOAT``, all ending in a known file extension -> ``FILE`` (aeon's header-less
  ``path,label-file`` form has two ``FILE`` columns), anything else -> ``STRING``.

Rows are untrusted: every ``FILE`` cell must be a plain relative path that stays under the
root after normalisation (see ``resolve_path``). Roots are chosen by the server and trusted.
"""

from __future__ import annotations

import csv
import math
import os
import posixpath
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

import fsspec

from ncloud.errors import InvalidInput

FILE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".txt", ".wav", ".npy", ".csv", ".tsv")
_FILE_HEADERS = frozenset({"image", "img", "file", "filename", "path", "audio"})
_TEXT_HEADERS = frozenset({"text", "sentence", "caption"})
_INT = re.compile(r"\s*[+-]?\d+\s*")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_DRIVE = re.compile(r"[A-Za-z]:")
_BOM = b"\xef\xbb\xbf"
_RELATIVE_ONLY = "manifest rows must be paths relative to the manifest"


class ColumnType(StrEnum):
    """What one manifest column holds."""

    FILE = "FILE"
    STRING = "STRING"
    ASCII_INT = "ASCII_INT"
    ASCII_FLOAT = "ASCII_FLOAT"


@dataclass(frozen=True)
class ManifestRow:
    """One data line: its physical line number and its cells."""

    line: int
    cells: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest; ``root`` is the fsspec URL or path that row paths resolve against."""

    columns: tuple[ColumnType, ...]
    rows: tuple[ManifestRow, ...]
    root: str


def quoted(text: str) -> str:
    """Quote a user's path or value for a message, escaping control characters."""
    if len(text) > 200:
        text = text[:200] + "..."
    shown = "".join(f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c for c in text)
    return f'"{shown}"'


def is_int(cell: str) -> bool:
    """Whether a cell is a decimal integer (surrounding spaces allowed)."""
    return _INT.fullmatch(cell) is not None


def int_cell(cell: str, line: int, column: int) -> int:
    """Parse an ``@ASCII_INT`` cell or say which line and value are wrong."""
    if not is_int(cell):
        raise InvalidInput(
            f"manifest line {line}: {quoted(cell)} is not an integer, "
            f"but column {column + 1} is @ASCII_INT"
        )
    return int(cell)


def float_cell(cell: str, line: int, column: int) -> float:
    """Parse an ``@ASCII_FLOAT`` cell (finite numbers only)."""
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidInput(
            f"manifest line {line}: {quoted(cell)} is not a finite number, "
            f"but column {column + 1} is @ASCII_FLOAT"
        )
    return value


def resolve_path(manifest_root: str, relative: str, line: int) -> str:
    """Turn a row's relative path into ``root/normalised``, refusing anything that escapes."""
    where = f"manifest line {line}: path {quoted(relative)}"
    path = relative.strip()
    if not path:
        raise InvalidInput(f"manifest line {line}: empty path in a file column")
    if any(unicodedata.category(c) == "Cc" for c in path):
        raise InvalidInput(f"{where} contains a control character")
    if "::" in path:
        raise InvalidInput(f"{where} is a chained URL; {_RELATIVE_ONLY}")
    if _URL.match(path):
        raise InvalidInput(f"{where} is a URL; {_RELATIVE_ONLY}")
    if path.startswith(("/", "\\")) or _DRIVE.match(path):
        raise InvalidInput(f"{where} is an absolute path; {_RELATIVE_ONLY}")
    if ":" in path:
        # fsspec reads ':' as the start of a protocol; no legitimate dataset needs one.
        raise InvalidInput(f'{where} contains ":"; {_RELATIVE_ONLY}')
    parts: list[str] = []
    # Backslashes are separators too: manifests written on Windows use them.
    for part in path.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidInput(f"{where} leaves the manifest root")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise InvalidInput(f"{where} names the manifest root, not a file")
    normalised = "/".join(parts)
    separator = "" if manifest_root.endswith("/") else "/"
    return f"{manifest_root}{separator}{normalised}"


def file_columns(m: Manifest) -> list[int]:
    """Indices of the ``FILE`` columns."""
    return [i for i, t in enumerate(m.columns) if t is ColumnType.FILE]


def parse_manifest(text_or_bytes: bytes | str, root: str) -> Manifest:
    """Parse and validate a manifest's text; every problem names its line."""
    lines = _content_lines(text_or_bytes)
    if not lines:
        raise InvalidInput("manifest is empty: it has no header and no rows")
    first_line, first = lines[0]
    if first.startswith("@"):
        columns = _typed_header(first_line, first)
        rows = [ManifestRow(n, tuple(text.split("\t"))) for n, text in lines[1:]]
        for row in rows:
            if row.cells[0].startswith("@"):
                raise InvalidInput(
                    f"manifest line {row.line}: a second header; the header is line {first_line}"
                )
        _check_widths(rows, len(columns), f"the header on line {first_line} has")
    else:
        if "\t" in first and "," not in first:
            raise InvalidInput(
                f"manifest line {first_line}: tab-separated rows need a header line such as "
                "@FILE<TAB>@ASCII_INT"
            )
        columns, rows = _csv(lines)
    if not rows:
        raise InvalidInput(f"manifest has a header (line {first_line}) but no rows")
    for row in rows:
        for i, (kind, cell) in enumerate(zip(columns, row.cells, strict=True)):
            if kind is ColumnType.FILE:
                resolve_path(root, cell, row.line)
            elif kind is ColumnType.ASCII_INT:
                int_cell(cell, row.line, i)
            elif kind is ColumnType.ASCII_FLOAT:
                float_cell(cell, row.line, i)
    return Manifest(columns, tuple(rows), root)


def read_manifest(url: str, root: str | None = None, max_bytes: int | None = None) -> Manifest:
    """Read a manifest through fsspec; relative rows resolve against its folder by default."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        if max_bytes is not None and fs.size(path) > max_bytes:
            raise InvalidInput(f"manifest {quoted(url)} is over the {max_bytes} byte limit")
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise InvalidInput(f"manifest {quoted(url)} not found") from None
    return parse_manifest(data, root if root is not None else manifest_folder(url))


def manifest_folder(url: str) -> str:
    """The folder holding a manifest, as a URL of the same scheme (or an absolute local path)."""
    if "://" in url:
        scheme, rest = url.rsplit("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return os.path.dirname(os.path.abspath(url))


def _content_lines(data: bytes | str) -> list[tuple[int, str]]:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    raw = raw.removeprefix(_BOM)
    found: list[tuple[int, str]] = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        chunk = chunk.removesuffix(b"\r")
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidInput(
                f"manifest line {number}: byte 0x{chunk[e.start]:02x} at column {e.start + 1} "
                "is not UTF-8; save the manifest as UTF-8"
            ) from None
        if text.strip() and not text.startswith("#"):
            found.append((number, text))
    return found


def _typed_header(line: int, text: str) -> tuple[ColumnType, ...]:
    columns: list[ColumnType] = []
    for cell in text.split("\t"):
        name = cell.strip().removeprefix("@").upper()
        if not cell.strip().startswith("@") or name not in ColumnType.__members__:
            choices = ", ".join(f"@{t.value}" for t in ColumnType)
            raise InvalidInput(
                f"manifest line {line}: unknown column type {quoted(cell.strip())}; "
                f"use one of {choices}, separated by tabs"
            )
        columns.append(ColumnType[name])
    return tuple(columns)


def _check_widths(rows: list[ManifestRow], width: int, expected: str) -> None:
    for row in rows:
        if len(row.cells) != width:
            raise InvalidInput(
                f"manifest line {row.line}: {len(row.cells)} columns, but {expected} {width}"
            )


def _csv_cells(line: int, text: str) -> tuple[str, ...]:
    try:
        cells = next(csv.reader([text], strict=True, skipinitialspace=True))
    except csv.Error as e:
        raise InvalidInput(f"manifest line {line}: bad CSV quoting ({e})") from None
    return tuple(c.strip() for c in cells)


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def _looks_like_path(cell: str) -> bool:
    return "/" in cell or "\\" in cell or cell.lower().endswith(FILE_EXTENSIONS)


def _csv(lines: list[tuple[int, str]]) -> tuple[tuple[ColumnType, ...], list[ManifestRow]]:
    table = [ManifestRow(n, _csv_cells(n, text)) for n, text in lines]
    first = table[0]
    has_header = not any(_is_number(c) or _looks_like_path(c) for c in first.cells)
    rows = table[1:] if has_header else table
    header = "the header on " if has_header else ""
    expected = f"{header}line {first.line} has"
    _check_widths(rows, len(first.cells), expected)
    names = [c.lower() for c in first.cells] if has_header else [""] * len(first.cells)
    columns = tuple(
        _infer(names[i], [r.cells[i] for r in rows], i == len(names) - 1 and len(names) >= 2)
        for i in range(len(names))
    )
    return columns, rows


def _infer(name: str, values: list[str], is_label: bool) -> ColumnType:
    if name in _FILE_HEADERS:
        return ColumnType.FILE
    if name in _TEXT_HEADERS:
        return ColumnType.STRING
    if values and all(is_int(v) for v in values):
        return ColumnType.ASCII_INT if is_label else ColumnType.ASCII_FLOAT
    if values and all(_is_number(v) for v in values):
        return ColumnType.ASCII_FLOAT
    if values and all(v.lower().endswith(FILE_EXTENSIONS) for v in values):
        return ColumnType.FILE
    return ColumnType.STRING
