"""`ncloud model ...`: train, ls, show (with -l log and -L follow), stop, resume, results, rm."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ncloud import plots, responses
from ncloud.bodies import default, describe
from ncloud.cli import common
from ncloud.cli.common import OutputOpt, YesOpt, confirm
from ncloud.errors import InvalidInput, NcloudError, NotFound, UsageError
from ncloud.render import Output, err, message, out, render

app = typer.Typer(help="The tenant's models: train, watch, stop, resume.", no_args_is_help=True)

COLUMNS = [
    "id",
    "name",
    "status",
    "epochs_done",
    "epochs",
    "workers",
    "gpus",
    "restarts",
    "position",
    "reason",
]
SHOW = [
    "id",
    "name",
    "spec",
    "status",
    "attempt",
    "epochs_done",
    "epochs",
    "batch_size",
    "workers",
    "gpus",
    "train_dataset",
    "valid_dataset",
    "validation_percent",
    "volume",
    "priority",
    "restarts",
    "max_restarts",
    "position",
    "reason",
    "deployment",
    "progress",
    "checkpoints",
    "error",
    "created_at",
    "started_at",
    "ended_at",
]
METRICS = ["epoch", "train_loss", "valid_loss", "valid_accuracy", "samples_per_s", "epoch_s"]
TERMINAL = ("Completed", "Failed", "Stopped")
FOLLOW_TIMEOUT_S = 24 * 3600.0
MAX_COMPARE = 16
SPEED = ("samples_per_s", "epoch_s")  # in `model show`, not in compare's one row per run


def parse_datasets(value: str) -> dict[str, int]:
    """`train:3,valid:4` (or just `3`) -> {"train": 3, "valid": 4}."""
    found: dict[str, int] = {}
    for part in value.split(","):
        role, _, ident = part.strip().rpartition(":")
        role = role or "train"
        if role not in ("train", "valid") or role in found:
            raise UsageError(f"--dataset {value!r}: use train:ID[,valid:ID]")
        try:
            found[role] = int(ident)
        except ValueError:
            raise UsageError(f"--dataset {value!r}: {ident!r} is not a dataset id") from None
    if "train" not in found:
        raise UsageError(f"--dataset {value!r} names no training dataset (train:ID)")
    return found


@app.command("train")
def train(
    spec: Annotated[Path | None, typer.Argument(help="The network: a .yaml or .py file.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="train:ID[,valid:ID]")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", "-e", help=describe("epochs"))] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-z", help=describe("batch_size"))
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n")] = None,
    validation_percent: Annotated[
        float, typer.Option("--validation-percent", help=describe("validation_percent"))
    ] = default("validation_percent"),
    workers: Annotated[int, typer.Option("--workers", "-w", help=describe("workers"))] = default(
        "workers"
    ),
    gpus: Annotated[int, typer.Option("--gpus", "-g", help=describe("gpus"))] = default("gpus"),
    volume: Annotated[
        list[str] | None,
        typer.Option(
            "--volume",
            "-v",
            help="ID[:PATH], repeatable: a volume mounted read-write at PATH (default /data).",
        ),
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help=describe("priority"))] = default(
        "priority"
    ),
    max_restarts: Annotated[
        int, typer.Option("--max-restarts", help=describe("max_restarts"))
    ] = default("max_restarts"),
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help=describe("checkpoint_every"))
    ] = default("checkpoint_every"),
    keep: Annotated[
        int, typer.Option("--keep-checkpoints", help=describe("keep_checkpoints"))
    ] = default("keep_checkpoints"),
    seed: Annotated[int, typer.Option("--seed", help=describe("seed"))] = default("seed"),
    resume_id: Annotated[
        int | None, typer.Option("--resume", "-i", help="Resume model ID.")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-L", help="Follow to the end.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Queue a training run of a network on a dataset (or -i ID to resume one)."""
    if resume_id is not None:
        resume(resume_id, epochs, None, follow, output)
        return
    if spec is None or dataset is None:
        raise UsageError("give the network file and --dataset train:ID (or -i ID to resume)")
    if not spec.is_file():
        raise InvalidInput(f"{spec} is not a file")
    sets = parse_datasets(dataset)
    found = common.client().models.train(
        name or f"{spec.stem}-{int(time.time())}",
        spec.name,
        spec.read_text(errors="replace"),
        sets["train"],
        valid_dataset=sets.get("valid"),
        validation_percent=validation_percent,
        epochs=epochs,
        batch_size=batch_size,
        workers=workers,
        gpus=gpus,
        volumes=[common.parse_mount(v) for v in volume or []] or None,
        priority=priority,
        max_restarts=max_restarts,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep,
        seed=seed,
    )
    _submitted(found, follow, output)


def _submitted(found: responses.Model, follow: bool, output: Output) -> None:
    render(found, COLUMNS if output == Output.table else None, output)
    model_id = found["id"]
    if follow:
        _follow(model_id)
        return
    message(f"next: ncloud model show {model_id} -L; ncloud model stop {model_id}")


@app.command("ls")
def ls(
    done: Annotated[bool, typer.Option("--done", help="Only finished models.")] = False,
    training: Annotated[bool, typer.Option("--training", help="Only queued or running.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """List the tenant's models, newest first, with status and the reason a run waits."""
    if done and training:
        raise UsageError("--done and --training exclude each other")
    status = "done" if done else "training" if training else None
    render(common.client().models.list(status), COLUMNS, output)


@app.command("show")
def show(
    model_id: int,
    log: Annotated[bool, typer.Option("--log", "-l", help="Print the training log.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-L", help="Follow to the end.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Details and per-epoch metrics; -l prints the log; -L follows with a progress bar."""
    models = common.client().models
    if follow:
        _follow(model_id)
        return
    if log:
        for entry in _all_lines(model_id):
            out.print(entry["line"], highlight=False, markup=False)
        return
    found = models.show(model_id)
    if output == Output.json:
        render(found, None, output)
        return
    render(found, SHOW, output)
    if found["metrics"]:
        render([_rounded(m) for m in found["metrics"]], metric_columns(found["metrics"]), output)
    if found["error"]:
        err.print(found["error"], highlight=False, markup=False)


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The built-in metrics, then each custom one a run reported, in the order first seen."""
    custom = dict.fromkeys(k for row in rows for k in row if k not in METRICS and k != "attempt")
    return [*METRICS, *custom]


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    digits = {"samples_per_s": 0, "epoch_s": 2}
    return {k: round(v, digits.get(k, 4)) if isinstance(v, float) else v for k, v in row.items()}


def _all_lines(model_id: int) -> list[responses.LogLine]:
    models, after = common.client().models, 0
    found: list[responses.LogLine] = []
    while batch := models.logs(model_id, after)["lines"]:
        found += batch
        after = batch[-1]["id"]
    return found


def _follow(model_id: int) -> None:
    """Print log lines as they come, with a live progress bar; exit 1 if the run failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    models = common.client().models
    after, deadline = 0, time.monotonic() + FOLLOW_TIMEOUT_S
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"model {model_id}", total=None)
        while True:
            found = models.logs(model_id, after)
            for entry in found["lines"]:
                bar.console.print(entry["line"], highlight=False, markup=False)
                after = entry["id"]
            status = found["status"]
            text = found["progress"] or status
            bar.update(
                task,
                description=f"model {model_id} {status}: {text}"[:110],
                total=found["epochs"],
                completed=found["epochs_done"],
            )
            if status in TERMINAL and not found["lines"]:
                break
            if time.monotonic() > deadline:
                raise NcloudError(f"model {model_id} still {status}; stopped following")
            time.sleep(0.5)
    final = models.show(model_id)
    message(f"model {model_id}: {final['status']} after {final['epochs_done']} epoch(s)")
    if final["status"] == "Failed":
        raise NcloudError(f"model {model_id} failed: {(final['error'] or '').splitlines()[-1:]}")


@app.command("stop")
def stop(
    model_ids: Annotated[list[int] | None, typer.Argument(help="Model ids.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every queued or running model.")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Ask runs to checkpoint and stop (ended hard after a grace period)."""
    models = common.client().models
    if all_:
        model_ids = [m["id"] for m in models.list("training")]
    if not model_ids:
        raise UsageError("give model ids or --all")
    render([models.stop(i) for i in model_ids], COLUMNS, output)


@app.command("resume")
def resume(
    model_id: int,
    epochs: Annotated[int | None, typer.Option("--epochs", "-e", help="Train up to this.")] = None,
    checkpoint: Annotated[int | None, typer.Option("--checkpoint", help="From this epoch.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-L")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Start a new attempt from the last good checkpoint; metrics continue."""
    _submitted(common.client().models.resume(model_id, epochs, checkpoint), follow, output)


@app.command("results")
def results(
    model_id: int,
    directory: Annotated[Path, typer.Option("--dir", "-d", help="Where to put them.")] = Path("."),
    as_zip: Annotated[bool, typer.Option("--zip", help="One .zip file instead.")] = False,
    as_tar: Annotated[bool, typer.Option("--tar", help="One .tar.gz file instead.")] = False,
    listing: Annotated[
        bool, typer.Option("--list", help="List the result files; download nothing.")
    ] = False,
    patterns: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="Only files whose path matches this glob (* crosses folders; repeatable).",
        ),
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Download weights, checkpoints, metrics and the log (or --list them)."""
    import json

    if as_zip and as_tar:
        raise typer.BadParameter("--zip and --tar each make one archive: give one of them")
    models = common.client().models
    stored = models.results(model_id)
    wanted = _matching({**stored, **dict.fromkeys(MADE_HERE, 0)}, patterns or [], model_id)
    if listing:
        rows = [{"name": n, "bytes": stored.get(n)} for n in sorted(wanted)]
        render(rows, ["name", "bytes"], output)
        return
    target = directory / f"model-{model_id}"
    staging = Path(tempfile.mkdtemp()) / target.name if (as_zip or as_tar) else target
    for name in sorted(n for n in wanted if n in stored):
        models.download_result(model_id, name, staging / name)
    if set(MADE_HERE) & set(wanted):
        found = models.show(model_id)
        staging.mkdir(parents=True, exist_ok=True)
        if "metrics.json" in wanted:
            (staging / "metrics.json").write_text(json.dumps(found["metrics"], indent=2))
        if "train.log" in wanted:
            lines = "\n".join(e["line"] for e in _all_lines(model_id))
            (staging / "train.log").write_text(lines + "\n")
        if "curves.png" in wanted:
            plots.curves(found["name"], found["metrics"], staging / "curves.png")
    where = target
    if as_zip or as_tar:
        where = Path(shutil.make_archive(str(target), "zip" if as_zip else "gztar", staging))
        shutil.rmtree(staging.parent, ignore_errors=True)
    render({"model": model_id, "files": len(wanted), "path": str(where)}, None, output)


# What `results` writes beside the stored files, from the API's answers.
MADE_HERE = ("metrics.json", "train.log", "curves.png")


def _matching(names: dict[str, int], patterns: list[str], model_id: int) -> list[str]:
    """The names that match any of the globs (all with none); none matching is an error."""
    from fnmatch import fnmatchcase

    if not patterns:
        return list(names)
    found = [n for n in names if any(fnmatchcase(n, p) for p in patterns)]
    if not found:
        raise NotFound(
            f"no result file of model {model_id} matches {' or '.join(map(repr, patterns))}; "
            f"it has: {', '.join(sorted(names))}"
        )
    return found


@app.command("compare")
def compare(
    model_ids: Annotated[list[int], typer.Argument(help="Two or more model ids.")],
    plot: Annotated[bool, typer.Option("--plot", help="Also draw their curves to a PNG.")] = False,
    plot_file: Annotated[Path, typer.Option("--plot-file", help="Where --plot writes.")] = Path(
        "compare.png"
    ),
    output: OutputOpt = Output.table,
) -> None:
    """Runs' metrics side by side: the last epoch's of each, and (--plot) their curves."""
    if len(model_ids) > MAX_COMPARE:
        raise typer.BadParameter(f"compare at most {MAX_COMPARE} models")
    models = common.client().models
    found = [models.show(i) for i in dict.fromkeys(model_ids)]
    if output == Output.json:
        render(
            [{k: m[k] for k in ("id", "name", "status", "metrics")} for m in found], None, output
        )
    else:
        rows = [_compared(m) for m in found]
        render(rows, list(dict.fromkeys(k for r in rows for k in r)), output)
    if plot:
        runs = [(f"{m['id']} {m['name']}", m["metrics"]) for m in found]
        message(f"curves: {plots.compare(runs, plot_file)}")


def _compared(m: responses.ModelDetail) -> dict[str, Any]:
    """One model's row: its status and epochs, its last epoch's metrics, its best accuracy."""
    last = m["metrics"][-1] if m["metrics"] else {}
    accuracy = [r["valid_accuracy"] for r in m["metrics"] if r.get("valid_accuracy") is not None]
    row = {"id": m["id"], "name": m["name"], "status": m["status"]}
    row["epochs"] = f"{m['epochs_done']}/{m['epochs']}"
    row["best_valid_accuracy"] = round(max(accuracy), 4) if accuracy else None
    shown = [k for k in metric_columns(m["metrics"]) if k not in ("epoch", *SPEED)]
    return {**row, **_rounded({k: last.get(k) for k in shown})}


@app.command("rm")
def rm(model_id: int, yes: YesOpt = False, output: OutputOpt = Output.table) -> None:
    """Remove a finished model, its checkpoints and results."""
    confirm(f"Remove model {model_id} and its results?", yes)
    render(common.client().models.remove(model_id), ["id", "name", "removed"], output)
