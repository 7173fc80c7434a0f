"""Client side of file uploads: parallel streamed PUTs with a rich progress bar."""

from __future__ import annotations

import os
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


def manifest_files(manifest_path: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """(local path, name) of the files a manifest names that exist next to it; the missing names.

    A name that resolves outside the manifest's folder is refused.
    """
    from ncloud.manifest import file_columns, read_manifest

    root = manifest_path.parent.resolve()
    manifest = read_manifest(str(manifest_path.resolve()))
    names = sorted({row.cells[col] for col in file_columns(manifest) for row in manifest.rows})
    found, missing = [], []
    for name in names:
        path = root / name
        if not path.exists():
            missing.append(name)
            continue
        check_inside(root, path)
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


def upload_files(
    files: list[tuple[Path, str]],
    put: Callable[[str, Iterator[bytes], int], object],
    parallel: int = 4,
    label: str = "uploading",
) -> None:
    """PUT each (local path, remote name) through put(name, chunks, size), in parallel."""
    total = sum(p.stat().st_size for p, _ in files)
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

        def one(path: Path, name: str) -> None:
            put(name, _read(path, lambda n: progress.advance(by_bytes, n)), path.stat().st_size)
            done[0] += 1
            rate = done[0] / max(time.monotonic() - started, 1e-3)
            progress.update(by_bytes, files=f"{done[0]}/{len(files)} files, {rate:.0f} files/s")

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(one, p, n) for p, n in files]
            for future in as_completed(futures):
                future.result()
        progress.update(by_bytes, completed=total or 1)
