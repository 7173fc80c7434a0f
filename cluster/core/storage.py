"""Where ncloud keeps files: one fsspec URL (NCLOUD_STORAGE) with a prefix per tenant.

Only this module turns names into storage URLs. User-supplied relative paths are
canonicalised (ncloud.manifest.resolve_path rules) before they are joined to a prefix,
so nothing a user sends can leave its tenant's prefix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from ncloud.errors import (
    InvalidInput,
    NcloudError,
    NotFound,
    PayloadTooLarge,
    ServerError,
    StorageFull,
    Unavailable,
)
from ncloud.manifest import resolve_path
from ncloud.settings import settings
from ncloud.validation import format_size

# Protocols the server reads and writes; anything else in a URL is refused.
ALLOWED_PROTOCOLS = ("file", "local", "s3", "memory")
CHUNK = 1 << 20


def storage_options(url: str) -> dict[str, Any]:
    """Connection options for a URL: the configured S3 endpoint for s3://, nothing otherwise."""
    if url.startswith("s3://") and settings().s3_endpoint_url:
        return {"client_kwargs": {"endpoint_url": settings().s3_endpoint_url}}
    return {}


def configure_fsspec() -> None:
    """Make every fsspec s3:// call in this process use NCLOUD_S3_ENDPOINT_URL (moto, MinIO)."""
    endpoint = settings().s3_endpoint_url
    conf = fsspec.config.conf.setdefault("s3", {})
    if endpoint:
        conf["client_kwargs"] = {"endpoint_url": endpoint}
    # Retry quickly: an unreachable endpoint should fail a request or an ingest, not hang it.
    conf["config_kwargs"] = {
        "connect_timeout": 5,
        "read_timeout": 30,
        "retries": {"max_attempts": 2},
    }


configure_fsspec()


_LOCAL = LocalFileSystem()


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol not in ALLOWED_PROTOCOLS or "::" in url:
        raise InvalidInput(f"storage URL {url!r} is not allowed (use a path or s3://...)")
    if "://" not in url:  # a plain path: what fsspec would answer, at a hundredth of the cost
        return _LOCAL, _LOCAL._strip_protocol(url)
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    return fs, path


_FULL = (errno.ENOSPC, errno.EDQUOT)


def storage_error(exc: BaseException) -> NcloudError | None:
    """What a failure of the storage itself means to a caller, or None when it is not one.

    A full disk is 507 storage_full; S3 that this server cannot use (no credentials, no
    endpoint it can reach) is 503 naming what is missing. The error boundary of every app
    asks this before it answers 500.
    """
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return StorageFull(
            "storage is full: no space left on the device behind NCLOUD_STORAGE or the "
            "server's temporary folder; nothing of this write was kept (an operator must "
            "free or add space)"
        )
    kind = type(exc).__name__
    if kind in ("NoCredentialsError", "PartialCredentialsError"):
        return Unavailable(
            "S3 is not configured on this server: it has no AWS credentials (an operator "
            "sets AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and NCLOUD_S3_ENDPOINT_URL "
            "for an S3 that is not AWS)"
        )
    if kind in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        endpoint = settings().s3_endpoint_url or "AWS S3 (NCLOUD_S3_ENDPOINT_URL is not set)"
        return Unavailable(f"cannot reach S3 at {endpoint}: {str(exc)[:200]}")
    return None


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts if p]])


def tenant_url(tenant: str, *parts: str) -> str:
    """A URL under the tenant's own prefix; parts are ncloud-made names, never user paths."""
    return join(settings().storage, "tenants", tenant, *parts)


def safe_join(base: str, relative: str, what: str = "path") -> str:
    """Join a user-supplied relative path to base after canonicalising it (no escapes)."""
    try:
        return resolve_path(base, relative, 0)
    except InvalidInput as exc:
        message = str(exc).replace("manifest line 0: path ", f"{what} ")
        raise InvalidInput(message.replace("the manifest root", "its folder")) from exc


def relative_name(relative: str, what: str = "path") -> str:
    """The canonical form of a user-supplied relative path (raises on escapes)."""
    joined = safe_join("/r", relative, what)
    return posixpath.relpath(joined, "/r")


def is_local(url: str) -> bool:
    """Whether url is on this machine's file system (not an object store)."""
    return isinstance(filesystem(url)[0], LocalFileSystem)


@contextlib.contextmanager
def _full_is_507() -> Iterator[None]:
    """A write that failed because the storage is full raises StorageFull; others as they are."""
    try:
        yield
    except BaseException as exc:
        full = storage_error(exc)
        if isinstance(full, StorageFull):
            raise full from None
        raise


def put_bytes(url: str, data: bytes) -> int:
    """A whole small file in one write: on an object store one PUT, whose object appears only
    once it is complete (no temporary name and copy, which cost three more requests)."""
    fs, path = filesystem(url)
    with _full_is_507():
        if isinstance(fs, LocalFileSystem):
            _write_local(path, data)
        else:
            fs.pipe_file(path, data)
    return len(data)


def _write_local(path: str, data: bytes) -> None:
    """data to a temporary name beside path, then moved into place; its folder made only
    when the first try finds it missing (a makedirs a file cost as much as its write)."""
    tmp = f"{path}.part-{os.urandom(4).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_stream(url: str, chunks: Iterable[bytes], max_bytes: int) -> int:
    """Stream chunks to url with bounded memory; refuse past max_bytes, leaving nothing behind.

    Writes to a temporary name first and moves it into place, so a reader never sees half
    a file (on S3 the object appears only when the upload completes).
    """
    fs, path = filesystem(url)
    tmp = f"{path}.part-{uuid.uuid4().hex[:8]}"
    local = isinstance(fs, LocalFileSystem)  # os calls: fsspec's cost a small file's write
    with _full_is_507():
        try:
            if local:
                os.makedirs(posixpath.dirname(path), exist_ok=True)
                with open(tmp, "wb") as out:
                    written = _copy(chunks, out, max_bytes)
                os.replace(tmp, path)
            else:
                fs.makedirs(posixpath.dirname(path), exist_ok=True)
                with fs.open(tmp, "wb") as out:
                    written = _copy(chunks, out, max_bytes)
                fs.mv(tmp, path)
        except BaseException:
            if local:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            elif fs.exists(tmp):
                fs.rm(tmp)
            raise
    return written


def _copy(chunks: Iterable[bytes], out: Any, max_bytes: int) -> int:
    written = 0
    for chunk in chunks:
        written += len(chunk)
        if written > max_bytes:
            raise PayloadTooLarge(f"file is over the {format_size(max_bytes)} limit")
        out.write(chunk)
    return written


def read_chunks(url: str) -> Iterator[bytes]:
    fs, path = filesystem(url)
    if not fs.exists(path):
        raise NotFound(f"no file at {url}")
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def open_file(url: str, missing: str) -> tuple[int, Iterator[bytes]]:
    """(size, chunks) of one file, for a response that streams it: NotFound(`missing`) before
    the first byte when it is not there (read_chunks alone would find out mid-response)."""
    fs, path = filesystem(url)
    if not fs.isfile(path):
        raise NotFound(missing)
    return int(fs.size(path)), read_chunks(url)


def list_files(url: str) -> dict[str, int]:
    """Relative path -> size of every file under url (empty when url does not exist)."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return {}
    found = fs.find(path, detail=True)
    base = path.rstrip("/") + "/"
    return {
        name[len(base) :]: int(info.get("size") or 0)
        for name, info in found.items()
        if name.startswith(base) and ".part-" not in name
    }


def remove_tree(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def size_of(url: str) -> int:
    fs, path = filesystem(url)
    return int(fs.size(path))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return bytes(fs.cat_file(path))


def check_writable(url: str | None = None) -> None:
    """Write and remove one small object under the storage root, or say in one line why
    not (a bucket that does not exist, no credentials, an endpoint that does not answer):
    the server checks this before it starts."""
    root = url or settings().storage
    probe = join(root, ".ncloud-probe", uuid.uuid4().hex)
    try:
        fs, path = filesystem(probe)
        if "://" not in root or root.startswith(("file://", "local://")):
            fs.makedirs(posixpath.dirname(path), exist_ok=True)  # never a bucket: S3 says
        fs.pipe_file(path, b"ok")
        fs.rm_file(path)
    except InvalidInput:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServerError(
            f"cannot write to NCLOUD_STORAGE={root}: {type(exc).__name__}: {reason[:200]}"
        ) from None
