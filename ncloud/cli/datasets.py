"""`ncloud dataset ...`: upload (with a progress bar) or link, then ls/show/rm/download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ncloud.cli import common
from ncloud.cli.common import OutputOpt, YesOpt, confirm
from ncloud.errors import InvalidInput, NcloudError, UsageError
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


def find_manifest(source: Path, manifest: str | None) -> Path:
    """The manifest to upload: SOURCE itself, or in folder SOURCE the one named by
    --manifest, else its only .tsv or .csv (as Nervana's `ncloud dataset upload DIR`)."""
    if source.is_file():
        if manifest is not None:
            raise UsageError(f"--manifest names a manifest inside a folder; {source} is a file")
        return source
    if not source.is_dir():
        raise InvalidInput(f"{source} is neither a manifest file nor a folder")
    if manifest is not None:
        found = source / manifest
        if not found.is_file() or found.resolve().parent != source.resolve():
            raise InvalidInput(f"{source} has no manifest {manifest!r} at its top level")
        return found
    candidates = sorted(p for p in source.iterdir() if p.suffix in (".tsv", ".csv") and p.is_file())
    if not candidates:
        raise InvalidInput(f"{source} holds no manifest (.tsv or .csv) at its top level")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise InvalidInput(f"{source} holds several manifests ({names}): pick one with --manifest")
    return candidates[0]


@app.command("upload")
def upload(
    source: Annotated[
        Path,
        typer.Argument(
            help="The manifest (.tsv or .csv) next to its files, or the folder that holds it."
        ),
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    manifest_name: Annotated[
        str | None,
        typer.Option(
            "--manifest", "-m", help="Which manifest of the folder (when it has several)."
        ),
    ] = None,
    parallel: Annotated[int, typer.Option(help="Requests sent at once.", min=1)] = 4,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the ingest.")] = True,
    output: OutputOpt = Output.table,
) -> None:
    """Upload a manifest and the files it names, then ingest (rerun to resume an upload)."""
    from ncloud.uploads import upload_files

    manifest = find_manifest(source, manifest_name)
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
        put_many=lambda archive: datasets.put_files(dataset_id, archive),
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
