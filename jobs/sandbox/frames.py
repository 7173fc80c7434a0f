"""Length-prefixed frames between the trusted side and a sandbox: JSON, then raw bytes.

Nothing that comes out of a sandbox is unpickled: a frame is a JSON header (at most
MAX_HEADER bytes) and, when the header says ``nbytes``, that many raw bytes (an array's
data, whose dtype and shape the header gives and the reader checks).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, BinaryIO

import numpy as np

MAX_HEADER = 4 << 20
MAX_PAYLOAD = 1 << 31
DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "uint8": np.uint8}
_LEN = struct.Struct(">II")


class FrameError(Exception):
    """The other side sent something that is not a frame (or hung up)."""


def encode(header: dict[str, Any], payload: bytes | memoryview = b"") -> bytes:
    body = json.dumps({**header, "nbytes": len(payload)}, default=float).encode()
    return b"".join([_LEN.pack(len(body), len(payload)), body, bytes(payload)])


def write(stream: BinaryIO, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
    stream.write(encode(header, payload))
    stream.flush()


def _exactly(stream: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise FrameError("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read(stream: BinaryIO, max_payload: int = MAX_PAYLOAD) -> tuple[dict[str, Any], bytes]:
    """One frame: (header, payload); FrameError on EOF or on anything malformed."""
    head_len, payload_len = _LEN.unpack(_exactly(stream, _LEN.size))
    if head_len > MAX_HEADER or payload_len > max_payload:
        raise FrameError(f"a frame of {head_len} + {payload_len} bytes is over the limit")
    try:
        header = json.loads(_exactly(stream, head_len))
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"a frame header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("nbytes") != payload_len:
        raise FrameError("a frame header is not an object with the payload's length")
    return header, _exactly(stream, payload_len) if payload_len else b""


def array_header(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(a.dtype), "shape": list(a.shape)}


def to_array(header: dict[str, Any], payload: bytes) -> np.ndarray:
    """The array a frame carries, checked: a known dtype and a shape that fits the bytes."""
    dtype = DTYPES.get(str(header.get("dtype")))
    shape = header.get("shape")
    if (
        dtype is None
        or not isinstance(shape, list)
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise FrameError(f"an array frame has dtype {header.get('dtype')!r}, shape {shape!r}")
    if int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize != len(payload):
        raise FrameError(f"an array frame of shape {shape} does not fit its {len(payload)} bytes")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def pipe() -> tuple[BinaryIO, BinaryIO]:
    """(reader, writer) of a new pipe, as unbuffered-enough binary files."""
    r, w = os.pipe()
    return os.fdopen(r, "rb"), os.fdopen(w, "wb")
