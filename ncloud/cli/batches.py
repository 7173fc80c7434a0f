"""`ncloud batch ...`: predict over a dataset or a new manifest, then ls/show/results."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ncloud.cli import common
from ncloud.cli.common import OutputOpt
from ncloud.errors import InvalidInput, NcloudError, UsageError
from ncloud.render import Output, message, render

app = typer.Typer(
    help="Batch predictions: a trained model over a dataset or a new manifest.",
    no_args_is_help=True,
)

COLUMNS = ["id", "model", "dataset", "manifest", "status", "rows", "predicted", "bad_rows", "k"]
SHOW = [
    "id",
    "model",
    "dataset",
    "manifest",
    "format",
    "k",
    "status",
    "rows",
    "predicted",
    "bad_rows",
    "error",
    "result",
    "created_at",
    "updated_at",
]
TERMINAL = ("Completed", "Failed")
WAIT_TIMEOUT_S = 24 * 3600.0


class ResultFormat(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


def wait_done(batch_id: int) -> Any:
    """Follow a batch until Completed or Failed, with a spinner showing rows done."""
    batches = common.client().batches
    return common.follow(
        lambda: batches.show(batch_id),
        lambda found: found["status"] in TERMINAL,
        lambda found: (
            f"batch {batch_id}: {found['status']} "
            f"{found['predicted'] + found['bad_rows']}/{found['rows']} rows"
        ),
        WAIT_TIMEOUT_S,
        f"batch {batch_id}",
        f"ncloud batch show {batch_id}",
    )


def _upload(
    model_id: int, manifest: Path, k: int, fmt: str, parallel: int, volumes: list[str]
) -> Any:
    from ncloud.uploads import manifest_files, upload_files

    if not manifest.is_file():
        raise InvalidInput(f"{manifest} is not a file")
    files, missing = manifest_files(manifest)  # a missing file's row becomes a bad row
    for name in missing[:5]:
        message(f"[yellow]warning:[/yellow] {name} not found: its row will be a bad row")
    if len(missing) > 5:
        message(f"[yellow]warning:[/yellow] ... and {len(missing) - 5} more files not found")
    batches = common.client().batches
    created = batches.create_upload(model_id, manifest.read_bytes(), manifest.name, k, fmt, volumes)
    batch_id = created["id"]
    upload_files(
        files,
        lambda n, chunks, size: batches.put_file(batch_id, n, chunks, size),
        parallel=parallel,
        label=f"batch {batch_id}",
    )
    return batches.start(batch_id)


@app.command("predict")
def predict(
    model_id: Annotated[int, typer.Argument(help="A trained model.")],
    dataset: Annotated[int | None, typer.Option("--dataset", help="A Ready dataset's id.")] = None,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="A new manifest (.tsv/.csv) next to its files."),
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Most likely classes per row.")] = 5,
    fmt: Annotated[ResultFormat, typer.Option("--format", help="Result file format.")] = (
        ResultFormat.csv
    ),
    parallel: Annotated[int, typer.Option(help="Files sent at once.")] = 4,
    volume: Annotated[
        list[str] | None,
        typer.Option(
            "--volume", "-v", help="ID[:PATH], repeatable: a volume the network reads (read-only)."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow it to the end.")] = True,
    output: OutputOpt = Output.table,
) -> None:
    """Predict every row of a dataset, or of a new manifest (its files are uploaded)."""
    mounts = [common.parse_mount(v) for v in volume or []]
    if dataset is not None and manifest is None:
        found = common.client().batches.predict_dataset(model_id, dataset, k, fmt.value, mounts)
    elif manifest is not None and dataset is None:
        texts = [f"{m['id']}:{m['path']}" for m in mounts]
        found = _upload(model_id, manifest, k, fmt.value, parallel, texts)
    else:
        raise UsageError("give exactly one of --dataset ID and --manifest PATH")
    batch_id = found["id"]
    if wait:
        found = wait_done(batch_id)
    render(found, SHOW if output == Output.table else None, output)
    if found["status"] == "Failed":
        raise NcloudError(f"batch {batch_id} failed: {found['error']}")
    message(f"next: ncloud batch show {batch_id}; ncloud batch results {batch_id} -d .")


@app.command("ls")
def ls(output: OutputOpt = Output.table) -> None:
    """List the tenant's batch predictions, newest first."""
    render(common.client().batches.list(), COLUMNS, output)


@app.command("show")
def show(batch_id: int, output: OutputOpt = Output.table) -> None:
    """Status, rows predicted and bad, and the error of a failed batch."""
    render(common.client().batches.show(batch_id), SHOW if output == Output.table else None, output)


@app.command("results")
def results(
    batch_id: int,
    directory: Annotated[Path, typer.Option("--dir", "-d", help="Where to put the file.")] = Path(
        "."
    ),
    output: OutputOpt = Output.table,
) -> None:
    """Download a Completed batch's result file (batch-ID.csv or batch-ID.jsonl)."""
    batches = common.client().batches
    found = batches.show(batch_id)
    dest = directory / f"batch-{batch_id}.{found['format']}"
    size = batches.download_result(batch_id, dest)
    render(
        {
            "batch": batch_id,
            "path": str(dest),
            "bytes": size,
            "rows": found["rows"],
            "bad_rows": found["bad_rows"],
        },
        None,
        output,
    )
