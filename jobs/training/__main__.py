"""Train a spec on manifests without the control plane: ``python -m jobs.training --spec ...``.

    ray job submit -- python -m jobs.training --spec examples/cnn.yaml \\
        --manifest DIR/train.tsv --validation-percent 0.2 -e 10 --out runs/cnn

Manifests are ingested once into --out/data (or the node cache without --out), keyed by
their path, size and modification time. Exit 0 when training completes; 1 with one line on
stderr for a domain error, or when stopped (SIGTERM/SIGINT) after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from jobs.datasets.linked import ensure_cached
from jobs.models.specs import parse_spec
from jobs.training.config import TrainConfig, progress_line
from jobs.training.trainer import train
from ncloud.bodies import DEFAULT_BATCH, DEFAULT_EPOCHS, default, describe
from ncloud.errors import InvalidInput, NcloudError
from ncloud.settings import settings

COLUMNS = ("epoch", "train_loss", "valid_loss", "valid_accuracy", "samples_per_s", "epoch_s")


class ConsoleReporter:
    """Progress lines (redrawn in place on a terminal) and one table row per epoch."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out, self.tty, self.rows = out, out.isatty(), 0

    def log(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def progress(self, epoch: int, batch: int, batches: int, cost: float, elapsed_s: float) -> None:
        line = progress_line(epoch, batch, batches, cost, elapsed_s)
        if self.tty:
            end = "\n" if batch == batches else ""
            print(f"\r{line}", end=end, file=self.out, flush=True)
        elif batch == batches:  # in a log file, one line per epoch is enough
            print(line, file=self.out, flush=True)

    def epoch(self, metrics: dict[str, Any]) -> None:
        if not self.rows:
            print("  ".join(f"{c:>14}" for c in COLUMNS), file=self.out)
        cells = [_cell(metrics.get(c)) for c in COLUMNS]
        print("  ".join(f"{c:>14}" for c in cells), file=self.out, flush=True)
        self.rows += 1

    def checkpoint(self, index: dict[str, Any]) -> None:
        pass


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _dataset(manifest: str, out: Path | None) -> str:
    """The ingested dataset of a manifest (path or URL), ingesting it on first use."""
    url = manifest if "://" in manifest else str(Path(manifest).resolve())
    return ensure_cached(url, out / "data" if out is not None else None)


def _help(name: str) -> str:
    return describe(name).replace("%", "%%")  # argparse formats help with %


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.training", description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="the network: a .yaml or .py spec file")
    p.add_argument("--manifest", required=True, help="the training manifest (path or URL)")
    p.add_argument("--valid-manifest", help="a validation manifest")
    p.add_argument(
        "--validation-percent",
        type=float,
        default=default("validation_percent"),
        help=_help("validation_percent"),
    )
    p.add_argument("-e", "--epochs", type=int, help=_help("epochs"))
    p.add_argument("-z", "--batch-size", type=int, help=_help("batch_size"))
    p.add_argument("--out", type=Path, help="where checkpoints, meta.json and model.pt go")
    p.add_argument("--gpus", type=int, default=default("gpus"), help=_help("gpus"))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=default("seed"), help=_help("seed"))
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    return p


def run(args: argparse.Namespace) -> int:
    spec_path = Path(args.spec)
    if not spec_path.is_file():
        raise InvalidInput(f"spec file {args.spec} not found")
    spec = parse_spec(spec_path.name, spec_path.read_text())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or settings().home / "runs" / f"{spec_path.stem}-{stamp}"
    stop = {"asked": False}

    def on_signal(_signum: int, _frame: Any) -> None:
        stop["asked"] = True

    cfg = TrainConfig(
        spec_name=spec_path.name,
        spec_text=spec.text,
        train_url=_dataset(args.manifest, args.out),
        valid_url=_dataset(args.valid_manifest, args.out) if args.valid_manifest else None,
        validation_percent=args.validation_percent,
        epochs=args.epochs or spec.epochs or DEFAULT_EPOCHS,
        batch_size=args.batch_size or spec.batch_size or DEFAULT_BATCH,
        run_url=str(Path(out).resolve()),
        resume=args.resume,
        gpus=args.gpus,
        threads=args.threads,
        seed=args.seed,
    )
    before = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = train(cfg, ConsoleReporter(), lambda: stop["asked"])
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if result["status"] != "completed":
        print(
            f"stopped after epoch {result['epochs_done']}; continue with --resume --out {out}",
            file=sys.stderr,
        )
        return 1
    print(f"model: {cfg.run_url}{os.sep}model.pt (meta.json beside it)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except NcloudError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
