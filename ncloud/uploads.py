"""Client side of file uploads, with a rich progress bar: small files packed many to an
uncompressed tar per request, large ones streamed one per PUT, several requests at once."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ncloud.errors import InvalidInput
from ncloud.render import err

CHUNK = 1 << 20
# Files under PACK_BELOW travel in archives of up to PACK_BYTES or PACK_FILES files (well
# under the server's MAX_ARCHIVE_BYTES and MAX_ARCHIVE_FILES).
PACK_BELOW = 1 << 20
PACK_BYTES = 8 << 20
PACK_FILES = 1000


def manifest_files(manifest_path: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """(local path, name) of the files a manifest names that exist next to it; the missing names.

    A name that resolves outside the manifest's folder is refused. The manifest's own
    parser has refused names that escape it as written (`..`, absolute), so a file needs
    the slow look through links only when it, or a folder on its way, is one.
    """
    from ncloud.manifest import file_columns, read_manifest

    root = manifest_path.parent.resolve()
    manifest = read_manifest(str(manifest_path.resolve()))
    names = sorted({row.cells[col] for col in file_columns(manifest) for row in manifest.rows})
    found, missing = [], []
    folders: dict[str, bool] = {}  # folder -> it resolves inside root
    for name in names:
        path = root / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            missing.append(name)
            continue
        folder = os.path.dirname(path)
        inside = folders.get(folder)
        if inside is None:
            inside = folders[folder] = Path(folder).resolve().is_relative_to(root)
        if not inside or not stat.S_ISREG(info.st_mode):
            check_inside(root, path)  # a link: follow it, refusing one out of root
        found.append((path, Path(name).as_posix()))
    return found, missing


def collect_folder(root: Path) -> list[tuple[Path, str]]:
    """Every regular file under root as (local path, relative name); dotfiles skipped.

    A symlink that resolves outside root is refused rather than followed.
    """
    root = root.resolve()
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a folder")
    found: list[tuple[Path, str]] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in dirs:
            if (Path(folder) / d).is_symlink() and not (
                (Path(folder) / d).resolve().is_relative_to(root)
            ):
                raise InvalidInput(f"{Path(folder) / d} is a link that leaves {root}; refusing it")
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            check_inside(root, path)
            found.append((path, path.relative_to(root).as_posix()))
    return found


def check_inside(root: Path, path: Path) -> None:
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise InvalidInput(f"{path} is a link that leaves {root}; refusing to upload it")
    if not real.is_file():
        raise InvalidInput(f"{path} is not a regular file")


def _read(path: Path, advance: Callable[[int], None]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            advance(len(chunk))
            yield chunk


def pack(files: list[tuple[Path, str]]) -> bytes:
    """An uncompressed tar of (local path, remote name): regular files, mode 0644, no owner."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, name in files:
            with open(path, "rb") as handle:
                info = tarfile.TarInfo(name)
                info.size = os.fstat(handle.fileno()).st_size
                info.mode = 0o644
                tar.addfile(info, handle)
    return buffer.getvalue()


Job = tuple[list[tuple[Path, str]], int, bool]  # files, their bytes, sent as one archive


def plan(files: list[tuple[Path, str]], packed: bool) -> list[Job]:
    """The requests an upload makes: small files grouped into archives, each large one
    alone (all alone when the server takes no archives)."""
    jobs: list[Job] = []
    batch: list[tuple[Path, str]] = []
    batch_bytes = 0
    for path, name in files:
        size = path.stat().st_size
        if not packed or size >= PACK_BELOW:
            jobs.append(([(path, name)], size, False))
            continue
        if batch and (batch_bytes + size > PACK_BYTES or len(batch) >= PACK_FILES):
            jobs.append((batch, batch_bytes, True))
            batch, batch_bytes = [], 0
        batch.append((path, name))
        batch_bytes += size
    if batch:
        jobs.append((batch, batch_bytes, True))
    return jobs


def upload_files(
    files: list[tuple[Path, str]],
    put: Callable[[str, Iterator[bytes], int], object],
    parallel: int = 4,
    label: str = "uploading",
    put_many: Callable[[bytes], object] | None = None,
) -> None:
    """Send each (local path, remote name), `parallel` requests at a time: put(name, chunks,
    size) streams one file; put_many(archive), when given, takes a tar of many small ones."""
    jobs = plan(files, put_many is not None)
    total = sum(size for _, size, _ in jobs)
    columns = (
        TextColumn("{task.fields[files]}"),
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        by_bytes = progress.add_task("bytes", total=total or 1, files=f"0/{len(files)} files")
        started, done = time.monotonic(), [0]

        def one(job: Job) -> None:
            batch, size, packed = job
            if packed and put_many is not None:
                put_many(pack(batch))
                progress.advance(by_bytes, size)
            else:
                path, name = batch[0]
                put(name, _read(path, lambda n: progress.advance(by_bytes, n)), size)
            done[0] += len(batch)
            rate = done[0] / max(time.monotonic() - started, 1e-3)
            progress.update(by_bytes, files=f"{done[0]}/{len(files)} files, {rate:.0f} files/s")

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(one, job) for job in jobs]
            for future in as_completed(futures):
                future.result()
        progress.update(by_bytes, completed=total or 1)
