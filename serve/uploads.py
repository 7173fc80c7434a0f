"""Receive a streamed file upload into storage with bounded memory."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from cluster.core import storage
from ncloud.errors import InvalidInput, PayloadTooLarge
from ncloud.settings import settings
from ncloud.validation import format_size


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    handle.seek(0)
    while chunk := handle.read(storage.CHUNK):
        yield chunk


def manifest_limit() -> int:
    """A manifest is a text file of names: 16 times a JSON body's limit (16 MiB by default)."""
    return settings().max_body_bytes * 16


async def manifest_body(request: Request) -> bytes:
    """A manifest body, refused with 413 as soon as it passes its limit: by the length it
    declares before a byte is read, else as it streams in (never buffered whole first)."""
    limit = manifest_limit()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"manifest is {int(declared):,} bytes, over the {format_size(limit)} limit"
        )
    parts, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"manifest is over the {format_size(limit)} limit")
        parts.append(chunk)
    return b"".join(parts)


async def receive_file(request: Request, url: str) -> int:
    """Spool the request body to a local temp file (never all in memory), then store it."""
    limit = settings().max_file_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"file is {format_size(int(declared))}, over the {format_size(limit)} limit"
        )
    with tempfile.TemporaryFile() as spool:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"file is over the {format_size(limit)} limit")
            spool.write(chunk)
        if declared is not None and declared.isdigit() and received != int(declared):
            raise InvalidInput(f"upload ended after {received} of {declared} bytes; send it again")
        return await run_in_threadpool(storage.write_stream, url, _chunks(spool), limit)
