"""Decode and validate one example of a manifest: an image, a text, an audio clip or features.

Rules (``layout_of``):
- Input: exactly one ``FILE`` column, whose extension says what it is (.jpg/.jpeg/.png image,
  .txt text, .wav audio, .npy or .csv/.tsv of numbers features; one dataset holds one kind),
  or one ``STRING`` column (inline text), or ``ASCII_FLOAT`` columns (a feature vector).
- Label: the last column when there are two or more, except that a manifest of only
  ``ASCII_FLOAT`` columns is all features and unlabelled. ``ASCII_INT`` is the class index;
  ``STRING`` is a class name; ``FILE`` is a label file (at most 4 KiB) holding an integer or
  a class name: if every label file holds an integer those are the indices, otherwise each
  file's text is a class name. Class names, stripped, are sorted; a name's index is its
  position in that list (``class_names``). No label column: label -1. Indices are >= 0.
- Image: JPEG or PNG only, fully decoded (truncation is an error), EXIF rotation applied;
  grayscale (1, L, LA, 16-bit) becomes uint8 [H, W, 1], everything else RGB uint8 [H, W, 3]
  (alpha dropped). Over ``max_pixels`` (or Pillow's own bomb limit) is refused.
- Text: UTF-8 (a BOM is dropped). Audio: 16-bit PCM WAV, int16 [frames, channels].
  Features: finite float32, 1-D; the caller checks every row has the same length
  (``check_feature_length``).
- Storage in shards (``encode_example``/``decode_stored``): little-endian raw bytes plus a
  shape; image uint8 HWC, text UTF-8 with shape [n_bytes], audio int16 [frames, channels],
  features float32 [n].
"""

from __future__ import annotations

import bisect
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from jobs.datasets.decoders import (
    DEFAULT_MAX_PIXELS,
    decode_audio,
    decode_features,
    decode_image,
    decode_text,
    finite_float32,
)
from ncloud.errors import InvalidInput, ServerError
from ncloud.manifest import (
    ColumnType,
    Manifest,
    ManifestRow,
    float_cell,
    int_cell,
    is_int,
    quoted,
    resolve_path,
)

MAX_LABEL_FILE_BYTES = 4096
_INT64_MAX = (1 << 63) - 1


class ElementKind(StrEnum):
    """What one example's input is."""

    IMAGE = "image"
    TEXT = "text"
    AUDIO = "audio"
    FEATURES = "features"


KIND_BY_EXTENSION = {
    ".jpg": ElementKind.IMAGE,
    ".jpeg": ElementKind.IMAGE,
    ".png": ElementKind.IMAGE,
    ".txt": ElementKind.TEXT,
    ".wav": ElementKind.AUDIO,
    ".npy": ElementKind.FEATURES,
    ".csv": ElementKind.FEATURES,
    ".tsv": ElementKind.FEATURES,
}
STORED_DTYPE: dict[ElementKind, np.dtype[Any]] = {
    ElementKind.IMAGE: np.dtype("|u1"),
    ElementKind.AUDIO: np.dtype("<i2"),
    ElementKind.FEATURES: np.dtype("<f4"),
}


@dataclass(frozen=True, eq=False)
class Example:
    """One decoded example; ``row`` is its manifest line."""

    row: int
    x: np.ndarray | str
    label: int
    kind: ElementKind


@dataclass(frozen=True)
class Layout:
    """Which columns are the input and the label, and what the input is."""

    kind: ElementKind
    input_column: int | tuple[int, ...]
    label_column: int | None
    label_type: ColumnType | None


def kind_of_path(path: str, line: int) -> ElementKind:
    """The kind of input a file holds, from its extension."""
    kind = KIND_BY_EXTENSION.get(posixpath.splitext(path.strip().lower())[1])
    if kind is None:
        raise InvalidInput(
            f"manifest line {line}: file {quoted(path)} is not a supported type; "
            f"use {', '.join(KIND_BY_EXTENSION)}"
        )
    return kind


def layout_of(m: Manifest) -> Layout:
    """Work out input and label columns, or say why the columns make no sense."""
    cols = m.columns
    floats = ColumnType.ASCII_FLOAT
    if all(t is floats for t in cols):
        return Layout(ElementKind.FEATURES, tuple(range(len(cols))), None, None)
    label_column = len(cols) - 1 if len(cols) >= 2 else None
    label_type = cols[-1] if label_column is not None else None
    inputs = cols[:label_column] if label_column is not None else cols
    if label_type is floats:
        raise InvalidInput(
            "the label column (the last) is @ASCII_FLOAT; labels are @ASCII_INT class "
            "indices, @STRING class names or @FILE label files"
        )
    if all(t is floats for t in inputs):
        return Layout(ElementKind.FEATURES, tuple(range(len(inputs))), label_column, label_type)
    if len(inputs) == 1 and inputs[0] is ColumnType.STRING:
        return Layout(ElementKind.TEXT, 0, label_column, label_type)
    if len(inputs) == 1 and inputs[0] is ColumnType.FILE:
        first_line: dict[ElementKind, int] = {}
        for row in m.rows:
            first_line.setdefault(kind_of_path(row.cells[0], row.line), row.line)
        if len(first_line) > 1:
            (a, line_a), (b, line_b) = list(first_line.items())[:2]
            raise InvalidInput(
                f"manifest line {line_b}: {_an(b)} file, but line {line_a} is {_an(a)} "
                "file; one dataset holds one kind of input"
            )
        return Layout(next(iter(first_line)), 0, label_column, label_type)
    names = ", ".join(f"@{t.value}" for t in cols)
    raise InvalidInput(
        f"manifest columns {names} make no sense: give one @FILE, one @STRING or some "
        "@ASCII_FLOAT input columns, then optionally a label column last"
    )


def class_names(
    m: Manifest,
    layout: Layout,
    read_bytes: Callable[[str], bytes],
    *,
    size_of: Callable[[str], int] | None = None,
) -> list[str] | None:
    """Sorted class names for @STRING or @FILE labels; None when labels are integers."""
    col = layout.label_column
    if col is None or layout.label_type is ColumnType.ASCII_INT:
        return None
    if layout.label_type is ColumnType.STRING:
        return sorted({_class_name(r.cells[col], r.line) for r in m.rows})
    texts = [_label_file_text(m, r, col, read_bytes, size_of) for r in m.rows]
    if all(is_int(t) for t in texts):
        return None
    return sorted(set(texts))


def decode_example(
    m: Manifest,
    layout: Layout,
    row: ManifestRow,
    read_bytes: Callable[[str], bytes],
    classes: list[str] | None,
    max_file_bytes: int,
    size_of: Callable[[str], int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Example:
    """Read and decode one row; ``size_of`` is asked before any file is read."""
    if len(row.cells) != len(m.columns):
        raise InvalidInput(
            f"manifest line {row.line}: {len(row.cells)} columns, expected {len(m.columns)}"
        )
    # The label first: a bad one is caught without reading the input file.
    label = _label(m, layout, row, read_bytes, classes, size_of)
    x: np.ndarray | str
    if isinstance(layout.input_column, tuple):
        values = [float_cell(row.cells[i], row.line, i) for i in layout.input_column]
        x = finite_float32(np.asarray(values), f"manifest line {row.line}: features")
    elif m.columns[layout.input_column] is ColumnType.STRING:
        x = row.cells[layout.input_column]
    else:
        cell = row.cells[layout.input_column]
        kind = kind_of_path(cell, row.line)
        if kind is not layout.kind:
            raise InvalidInput(
                f"manifest line {row.line}: {_an(kind)} file in {_an(layout.kind)} dataset"
            )
        url = resolve_path(m.root, cell, row.line)
        data = _read(url, row.line, cell, read_bytes, size_of, max_file_bytes, "file")
        x = decode_file(cell, data, f"manifest line {row.line}: file {quoted(cell)}", max_pixels)
    return Example(row.line, x, label, layout.kind)


def decode_file(
    name: str, data: bytes, where: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray | str:
    """Decode a file's bytes by its name's extension; ``where`` starts every error message."""
    kind = KIND_BY_EXTENSION.get(posixpath.splitext(name.strip().lower())[1])
    if kind is ElementKind.IMAGE:
        return decode_image(data, where, max_pixels)
    if kind is ElementKind.TEXT:
        return decode_text(data, where)
    if kind is ElementKind.AUDIO:
        return decode_audio(data, where)
    if kind is ElementKind.FEATURES:
        return decode_features(name, data, where)
    raise InvalidInput(f"{where} is not a supported type; use {', '.join(KIND_BY_EXTENSION)}")


def check_feature_length(ex: Example, expected: int) -> None:
    """Every features example of a dataset has the same length."""
    if isinstance(ex.x, np.ndarray) and ex.x.shape[0] != expected:
        raise InvalidInput(
            f"manifest line {ex.row}: {ex.x.shape[0]} features, but earlier rows have "
            f"{expected}; every row needs the same number"
        )


def encode_example(ex: Example) -> tuple[bytes, list[int]]:
    """The bytes and shape a shard stores for an example (see the module docstring)."""
    if isinstance(ex.x, str):
        data = ex.x.encode("utf-8")
        return data, [len(data)]
    array = np.ascontiguousarray(ex.x, dtype=STORED_DTYPE[ex.kind])
    return array.tobytes(), [int(n) for n in array.shape]


def decode_stored(kind: ElementKind, data: bytes, shape: list[int]) -> np.ndarray | str:
    """Inverse of ``encode_example``; arrays are read-only views of ``data``."""
    if kind is ElementKind.TEXT:
        return data.decode("utf-8")
    dtype = STORED_DTYPE[kind]
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
        raise ServerError(
            f"a stored {kind.value} example is {len(data)} bytes, which does not fit its "
            f"shape {shape}; ingest the dataset again"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _read(
    url: str,
    line: int,
    shown: str,
    read_bytes: Callable[[str], bytes],
    size_of: Callable[[str], int] | None,
    limit: int,
    what: str,
) -> bytes:
    # Messages name the row's own path, never the resolved URL: the storage root is private.
    where = f"manifest line {line}: {what} {quoted(shown)}"
    try:
        size = size_of(url) if size_of is not None else None
        if size is not None and size > limit:
            raise InvalidInput(f"{where} is {_human(size, limit)}")
        data = read_bytes(url)
    except FileNotFoundError:
        raise InvalidInput(f"{where} not found under the manifest root") from None
    except IsADirectoryError:
        raise InvalidInput(f"{where} is a folder, not a file") from None
    if len(data) > limit:
        raise InvalidInput(f"{where} is {_human(len(data), limit)}")
    return data


def _human(size: int, limit: int) -> str:
    def fmt(n: int) -> str:
        for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
            if n >= scale:
                return f"{n / scale:.4g} {unit}"
        return f"{n} bytes"

    big, cap = fmt(size), fmt(limit)
    if big == cap:
        big, cap = f"{size} bytes", f"{limit} bytes"
    return f"{big}, over the {cap} limit"


def _class_name(cell: str, line: int) -> str:
    name = cell.strip()
    if not name:
        raise InvalidInput(f"manifest line {line}: empty class name in the label column")
    return name


def _label_file_text(
    m: Manifest,
    row: ManifestRow,
    col: int,
    read_bytes: Callable[[str], bytes],
    size_of: Callable[[str], int] | None,
) -> str:
    cell = row.cells[col]
    url = resolve_path(m.root, cell, row.line)
    data = _read(url, row.line, cell, read_bytes, size_of, MAX_LABEL_FILE_BYTES, "label file")
    return _class_name(
        decode_text(data, f"manifest line {row.line}: label file {quoted(cell)}"), row.line
    )


def _label(
    m: Manifest,
    layout: Layout,
    row: ManifestRow,
    read_bytes: Callable[[str], bytes],
    classes: list[str] | None,
    size_of: Callable[[str], int],
) -> int:
    col = layout.label_column
    if col is None:
        return -1
    if layout.label_type is ColumnType.ASCII_INT:
        return _index(int_cell(row.cells[col], row.line, col), row.line)
    if layout.label_type is ColumnType.STRING:
        name = _class_name(row.cells[col], row.line)
    else:
        name = _label_file_text(m, row, col, read_bytes, size_of)
        if classes is None:
            if not is_int(name):
                raise InvalidInput(
                    f"manifest line {row.line}: label file {quoted(row.cells[col])} holds "
                    f"{quoted(name)}, not an integer like the other label files"
                )
            return _index(int(name), row.line)
    if classes is None:
        raise ValueError("class names are needed for these labels; call class_names() first")
    # classes is sorted (class_names returns it so), which makes the lookup O(log n).
    i = bisect.bisect_left(classes, name)
    if i == len(classes) or classes[i] != name:
        raise InvalidInput(
            f"manifest line {row.line}: label {quoted(name)} is not one of the "
            f"{len(classes)} classes"
        )
    return i


def _an(kind: ElementKind) -> str:
    return f"an {kind.value}" if kind.value[0] in "aeiou" else f"a {kind.value}"


def _index(value: int, line: int) -> int:
    if not 0 <= value <= _INT64_MAX:
        raise InvalidInput(
            f"manifest line {line}: label {value} is not a class index (0, 1, 2, ...)"
        )
    return value
