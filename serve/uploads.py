"""Receive a streamed file upload, or a tar of many files, into storage with bounded memory."""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import IO

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from cluster.core import storage
from ncloud.errors import InvalidInput, PayloadTooLarge
from ncloud.protocol import MAX_ARCHIVE_FILES, archive_limit
from ncloud.settings import settings
from ncloud.validation import format_size

SPOOL_IN_MEMORY = 16 << 20  # twice the client's archives (ncloud.uploads.PACK_BYTES)
PUTS_AT_ONCE = 8  # an archive's members written to an object store at a time
HELD_BELOW = 1 << 20  # members read whole before they are sent (the client packs < 1 MiB)


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


async def _spool(request: Request, spool: IO[bytes], limit: int, what: str) -> int:
    """The request body into spool, refused past limit (by the length it declares first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"{what} is {format_size(int(declared))}, over the {format_size(limit)} limit"
        )
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(f"{what} is over the {format_size(limit)} limit")
        spool.write(chunk)
    if declared is not None and declared.isdigit() and received != int(declared):
        raise InvalidInput(f"upload ended after {received} of {declared} bytes; send it again")
    return received


async def receive_file(request: Request, url: str) -> int:
    """Spool the request body to a local temp file (never all in memory), then store it."""
    limit = settings().max_file_bytes
    with tempfile.TemporaryFile() as spool:
        await _spool(request, spool, limit, "file")
        return await run_in_threadpool(storage.write_stream, url, _chunks(spool), limit)


# Where an archive's member goes: its canonical name and storage URL, or an error (4xx).
Target = Callable[[str], tuple[str, str]]


async def receive_archive(request: Request, target: Target) -> dict[str, int]:
    """A tar of many files (the client packs a folder's small files so), spooled like a file.

    Every member is checked before any is stored: only regular files, each under the file
    limit, each name accepted by `target`, no name twice. Then each is stored as one PUT
    would store it. Returns name -> bytes stored.
    """
    limit = settings().max_file_bytes
    # Held in memory up to the size the client packs small files to (a disk spool wrote
    # every byte twice); a larger archive goes to disk past that.
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
        await _spool(request, spool, archive_limit(limit), "archive")
        return await run_in_threadpool(_store_members, spool, target, limit)


def _store_members(spool: IO[bytes], target: Target, limit: int) -> dict[str, int]:
    spool.seek(0)
    try:
        with tarfile.open(fileobj=spool, mode="r:") as tar:
            planned = _plan(tar, target, limit)
            # An object store takes a PUT's latency per file, whatever its size: up to
            # PUTS_AT_ONCE at a time there; a local disk gains nothing from threads.
            if not planned or storage.is_local(planned[0][2]):
                return _store(tar, planned, limit, None)
            with ThreadPoolExecutor(max_workers=PUTS_AT_ONCE) as pool:
                return _store(tar, planned, limit, pool)
    except tarfile.TarError as exc:
        raise InvalidInput(f"the body is not a readable tar archive: {exc}") from None


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    handle = tar.extractfile(member)
    if handle is None:  # _plan let only regular files through
        raise InvalidInput(f"archive member {member.name!r} has no data")
    return handle


def _store(
    tar: tarfile.TarFile,
    planned: list[tuple[tarfile.TarInfo, str, str]],
    limit: int,
    pool: ThreadPoolExecutor | None,
) -> dict[str, int]:
    """Each member as one PUT would store it: a small one read whole and written at once (on
    `pool` when given; the tar is one stream, read in turn, so at most PUTS_AT_ONCE small
    members are held at once), a large one streamed alone."""
    stored: dict[str, int] = {}
    pending: dict[Future[int], str] = {}
    for member, name, url in planned:
        if member.size > HELD_BELOW:
            stored[name] = storage.write_stream(url, _chunks(_member(tar, member)), limit)
        elif pool is None:
            stored[name] = storage.put_bytes(url, _member(tar, member).read())
        else:
            data = _member(tar, member).read()
            pending[pool.submit(storage.put_bytes, url, data)] = name
            if len(pending) >= PUTS_AT_ONCE:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    stored[pending.pop(future)] = future.result()
    for future, name in pending.items():
        stored[name] = future.result()
    return stored


def _plan(
    tar: tarfile.TarFile, target: Target, limit: int
) -> list[tuple[tarfile.TarInfo, str, str]]:
    planned: list[tuple[tarfile.TarInfo, str, str]] = []
    seen: set[str] = set()
    folders: set[str] = set()
    for member in tar:
        if member.isdir():
            continue
        if not member.isreg() or member.issparse():
            raise InvalidInput(
                f"archive member {member.name!r} is a link, device or sparse file: "
                "only regular files may be uploaded"
            )
        if member.size > limit:
            raise PayloadTooLarge(
                f"archive member {member.name!r} is {format_size(member.size)}, over the "
                f"{format_size(limit)} limit"
            )
        name, url = target(member.name)
        if name in seen or name in folders:
            raise InvalidInput(f"archive names {name!r} twice, or as a file and a folder")
        parents = {name.rsplit("/", i)[0] for i in range(1, name.count("/") + 1)}
        if parents & seen:
            raise InvalidInput(f"archive names {name!r} under one of its files")
        seen.add(name)
        folders |= parents
        planned.append((member, name, url))
        if len(planned) > MAX_ARCHIVE_FILES:
            raise InvalidInput(f"an archive may hold at most {MAX_ARCHIVE_FILES:,} files")
    return planned
