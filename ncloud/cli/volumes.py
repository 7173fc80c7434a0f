"""`ncloud volume ...`: upload folders of extra files, list, show, download, remove."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ncloud import responses
from ncloud.cli import common
from ncloud.cli.common import OutputOpt, YesOpt, confirm
from ncloud.errors import InvalidInput, NcloudError, UsageError
from ncloud.render import Output, err, message, render
from ncloud.validation import format_size

app = typer.Typer(
    help="The tenant's volumes: extra files mounted at /data in training.", no_args_is_help=True
)

VOLUME_COLUMNS = ["id", "name", "files", "bytes", "created_at", "updated_at"]
FILE_COLUMNS = ["path", "bytes"]

VolumeId = Annotated[int, typer.Argument(help="Volume id (ncloud volume ls).")]


def _summary(volume: responses.VolumeDetail) -> dict[str, Any]:
    return {k: v for k, v in volume.items() if k != "file_list"}


@app.command("upload")
def upload(
    folder: Annotated[Path, typer.Argument(help="Folder to upload, recursively.")],
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Name of a new volume (default: folder's).")
    ] = None,
    volume_id: Annotated[
        int | None, typer.Option("--id", "-i", help="Add to or replace files in this volume.")
    ] = None,
    parallel: Annotated[int, typer.Option("--parallel", help="Requests sent at once.", min=1)] = 4,
    output: OutputOpt = Output.table,
) -> None:
    """Upload a folder into a new volume, or into volume ID with -i (dotfiles are skipped)."""
    from ncloud.uploads import collect_folder, upload_files

    if name is not None and volume_id is not None:
        raise UsageError("give --name for a new volume or -i ID for an existing one, not both")
    # Check every file before anything is created: a link out of the folder stops it all.
    files = collect_folder(folder)
    if not files:
        raise InvalidInput(f"{folder} has no files to upload (files starting with '.' are skipped)")
    c = common.client()
    created = volume_id is None
    if volume_id is None:
        volume_id = int(c.volumes.create(name or folder.resolve().name)["id"])
    vid = volume_id
    try:
        # The progress bar goes to stderr so that `-o json` keeps stdout clean.
        with contextlib.redirect_stdout(sys.stderr):
            upload_files(
                files,
                lambda path, chunks, size: c.volumes.put_file(vid, path, chunks, size),
                parallel=parallel,
                label=f"volume {vid}",
                put_many=lambda archive: c.volumes.put_files(vid, archive),
            )
    except BaseException as exc:
        if created:
            with contextlib.suppress(NcloudError):
                c.volumes.remove(vid)
        if isinstance(exc, NcloudError):
            kept = (
                "the new volume was removed" if created else f"volume {vid} may be partly updated"
            )
            raise type(exc)(f"{exc.message} ({kept})") from exc
        raise
    found = _summary(c.volumes.show(vid))
    render({**found, "uploaded": len(files)}, None, output)
    total = sum(p.stat().st_size for p, _ in files)
    message(f"uploaded {len(files)} files ({format_size(total)}) to volume {vid} {found['name']!r}")
    message("next:")
    message(f"  ncloud volume show {vid}               # its files")
    message(f"  ncloud volume upload DIR -i {vid}      # add or replace files")
    message(f"  -v {vid} mounts it read-write at /data when training")


@app.command("ls")
def list_volumes(output: OutputOpt = Output.table) -> None:
    """List the tenant's volumes."""
    render(common.client().volumes.list(), VOLUME_COLUMNS, output)


@app.command("show")
def show(volume_id: VolumeId, output: OutputOpt = Output.table) -> None:
    """A volume and its files."""
    found = common.client().volumes.show(volume_id)
    if output == Output.json:
        render(found, None, output)
        return
    render(_summary(found), VOLUME_COLUMNS, output)
    render(found["file_list"], FILE_COLUMNS, output)


@app.command("rm")
def remove(volume_id: VolumeId, yes: YesOpt = False, output: OutputOpt = Output.table) -> None:
    """Remove a volume and all its files."""
    confirm(f"Remove volume {volume_id} and all its files?", yes)
    render(common.client().volumes.remove(volume_id), None, output)


@app.command("download")
def download(
    volume_id: VolumeId,
    dest: Annotated[
        Path | None, typer.Option("--dest", "-d", help="Folder to write into (default: ./NAME).")
    ] = None,
) -> None:
    """Download every file of a volume into a folder."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from ncloud.client.volumes import local_target

    c = common.client()
    found = c.volumes.show(volume_id)
    root = dest if dest is not None else Path(found["name"])
    # Check every name before writing anything: a file may only land inside root.
    targets = [
        (e["path"], local_target(root, e["path"]), int(e["bytes"])) for e in found["file_list"]
    ]
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task(f"volume {volume_id}", total=found["bytes"] or 1)
        for done, (path, target, size) in enumerate(targets, 1):
            c.volumes.download_file(volume_id, path, target)
            progress.update(
                task, advance=size, description=f"volume {volume_id}: {done}/{len(targets)} files"
            )
        progress.update(task, completed=found["bytes"] or 1)
    message(f"downloaded {len(targets)} files ({format_size(found['bytes'])}) to {root}")
