"""`ncloud dataset ...`: upload (with a progress bar) or link, then ls/show/rm/download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ncloud.cli import common
from ncloud.cli.common import OutputOpt, YesOpt, confirm
from ncloud.errors import InvalidInput, NcloudError
from ncloud.render import Output, message, render

app = typer.Typer(
    help="The tenant's datasets (aeon manifests and their files).", no_args_is_help=True
)

COLUMNS = ["id", "name", "status", "source", "rows", "kind", "classes", "bytes", "created_at"]
SHOW = [
    "id",
    "name",
    "status",
    "source",
    "link",
    "rows",
    "files",
    "kind",
    "classes",
    "class_counts",
    "shape",
    "bytes",
    "shards",
    "error",
    "created_at",
    "updated_at",
]
WAIT_TIMEOUT_S = 3600.0


def local_files(manifest_path: Path) -> list[tuple[Path, str]]:
    """(local path, name) of every file the manifest names, checked before anything is sent."""
    from ncloud.uploads import manifest_files

    found, missing = manifest_files(manifest_path)
    if missing:
        root = manifest_path.parent.resolve()
        raise InvalidInput(f"{manifest_path}: file {missing[0]!r} not found under {root}")
    return found


def wait_ready(dataset_id: int, quiet: bool = False) -> Any:
    """Follow the ingest until Ready or Error, with a spinner showing Ingesting n/N."""
    datasets = common.client().datasets
    return common.follow(
        lambda: datasets.show(dataset_id),
        lambda found: found["status"] in ("Ready", "Linked", "Error"),
        lambda found: "" if quiet else f"dataset {dataset_id}: {found['status']}",
        WAIT_TIMEOUT_S,
        f"dataset {dataset_id}",
        f"ncloud dataset show {dataset_id}",
    )


@app.command("upload")
def upload(
    manifest: Annotated[
        Path, typer.Argument(help="The manifest (.tsv or .csv) next to its files.")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    parallel: Annotated[int, typer.Option(help="Files sent at once.")] = 4,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the ingest.")] = True,
    output: OutputOpt = Output.table,
) -> None:
    """Upload a manifest and the files it names, then ingest (rerun to resume an upload)."""
    from ncloud.uploads import upload_files

    if not manifest.is_file():
        raise InvalidInput(f"{manifest} is not a file")
    files = local_files(manifest)
    datasets = common.client().datasets
    created = datasets.create(name, manifest.read_bytes(), manifest.name)
    dataset_id = created["id"]
    present: dict[str, int] = created["present"]
    todo = [(p, n) for p, n in files if present.get(n) != p.stat().st_size]
    if len(todo) < len(files):
        message(
            f"resuming dataset {dataset_id}: {len(files) - len(todo)} of {len(files)} "
            "files are there already"
        )
    upload_files(
        todo,
        lambda n, chunks, size: datasets.put_file(dataset_id, n, chunks, size),
        parallel=parallel,
        label=f"dataset {dataset_id}",
    )
    datasets.ingest(dataset_id)
    found = wait_ready(dataset_id) if wait else datasets.show(dataset_id)
    render(found, SHOW if output == Output.table else None, output)
    if found["status"] == "Error":
        raise NcloudError(f"dataset {dataset_id} failed to ingest: {found['error']}")
    message(
        f"next: ncloud dataset show {dataset_id}; "
        f"ncloud model train examples/cnn.yaml --dataset train:{dataset_id}"
    )


@app.command("link")
def link(
    url: Annotated[str, typer.Argument(help="s3://bucket/path/manifest.tsv")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    output: OutputOpt = Output.table,
) -> None:
    """Link a dataset that sits in S3; it is read and cached on first use."""
    found = common.client().datasets.link(name, url)
    render(found, SHOW if output == Output.table else None, output)


@app.command("ingest")
def ingest(dataset_id: int, output: OutputOpt = Output.table) -> None:
    """Ingest again (after an Error, once its cause is fixed)."""
    common.client().datasets.ingest(dataset_id)
    found = wait_ready(dataset_id)
    render(found, SHOW if output == Output.table else None, output)
    if found["status"] == "Error":
        raise NcloudError(f"dataset {dataset_id} failed to ingest: {found['error']}")


@app.command("ls")
def ls(output: OutputOpt = Output.table) -> None:
    """List the tenant's datasets, newest first."""
    render(common.client().datasets.list(), COLUMNS, output)


@app.command("show")
def show(dataset_id: int, output: OutputOpt = Output.table) -> None:
    """Rows, classes with counts, shapes, bytes, shards and status."""
    found = common.client().datasets.show(dataset_id)
    render(found, SHOW if output == Output.table else None, output)


@app.command("rm")
def rm(dataset_id: int, yes: YesOpt = False, output: OutputOpt = Output.table) -> None:
    """Remove a dataset and its stored files."""
    confirm(f"Remove dataset {dataset_id} and its files?", yes)
    render(common.client().datasets.remove(dataset_id), ["id", "name", "status"], output)


@app.command("download")
def download(
    dataset_id: int,
    directory: Annotated[Path, typer.Option("--dir", "-d", help="Where to put the files.")] = Path(
        "."
    ),
) -> None:
    """Download the manifest and the files it names, as uploaded."""
    datasets = common.client().datasets
    found = datasets.show(dataset_id)
    target = directory / found["name"]
    names = sorted(datasets.files(dataset_id))
    for name in names:
        datasets.download_file(dataset_id, name, target / name)
    message(f"downloaded {len(names)} files of dataset {dataset_id} to {target}")
