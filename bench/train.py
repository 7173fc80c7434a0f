"""Benchmark: epoch time of a spec trained through the platform versus a plain torch loop."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

if __package__ in (None, ""):  # `python bench/train.py` as well as `python -m bench.train`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    ROOT,
    median,
    private_server,
    replicate,
    tenant_client,
    upload,
    verdict,
    wait_for,
)
from examples.digits import NAMES, make_digits
from jobs.models.specs import build, parse_spec
from ncloud import responses

TARGET = 1.10
SPEC = ROOT / "examples" / "cnn.yaml"
BATCH = 64
TERMINAL = {"Completed", "Failed", "Stopped"}


def load_manifest(
    manifest: Path, classes: list[str], transform: dict[str, Any] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's PNG decoded with Pillow into [N, 1, H, W] floats, scaled to 0..1 and
    normalised as the spec's transform says; labels as class indices."""
    _, *rows = [line.split("\t") for line in manifest.read_text().splitlines() if line]
    images, labels = [], []
    for name, label in rows:
        with Image.open(manifest.parent / name) as im:
            images.append(np.asarray(im.convert("L"), dtype=np.uint8))
        labels.append(classes.index(label))
    mean, std = float((transform or {}).get("mean", 0.0)), float((transform or {}).get("std", 1.0))
    x = (torch.from_numpy(np.stack(images)).unsqueeze(1).float() / 255.0 - mean) / std
    return x, torch.tensor(labels, dtype=torch.int64)


def plain_loop(
    x: torch.Tensor, y: torch.Tensor, classes: int, epochs: int, spec_text: str
) -> list[float]:
    """The spec trained by a bare single-process loop on tensors in memory; s per epoch."""
    spec = parse_spec(SPEC.name, spec_text)
    torch.set_num_threads(1)  # a platform worker gets one CPU bundle and one thread
    torch.manual_seed(0)
    built = build(spec, classes, tuple(x.shape[1:]))
    model, optimizer, loss_fn = built.model, built.optimizer, built.loss
    model.train()
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(y))
        for i in range(0, len(y), BATCH):
            idx = order[i : i + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - started)
    return times


def platform_run(
    manifest: Path, epochs: int, spec_text: str, timeout_s: float
) -> tuple[list[float], responses.ModelDetail]:
    """The spec trained through a private server; seconds per epoch and the model record."""
    with private_server() as server:
        admin = server.admin()
        c = tenant_client(admin, "bench", 2)
        started = time.perf_counter()
        ds = upload(c, manifest, "bench-train")
        print(f"uploaded and ingested {manifest.name} in {time.perf_counter() - started:.1f}s")
        model = c.models.train(
            "bench-cnn", SPEC.name, spec_text, ds, epochs=epochs, batch_size=BATCH, workers=1
        )

        def finished() -> responses.ModelDetail | None:
            shown = c.models.show(model["id"])
            return shown if shown["status"] in TERMINAL else None

        shown = wait_for(finished, timeout_s, f"model {model['id']} to finish", every=1.0)
        if shown["status"] != "Completed":
            print(f"platform run ended {shown['status']}: {shown.get('error')} "
                  f"(server log: {server.log_path})", file=sys.stderr)  # fmt: skip
            raise SystemExit(1)
        metrics = sorted(shown["metrics"], key=lambda m: m["epoch"])
        return [float(m["epoch_s"]) for m in metrics], shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5, help="epochs (the first is warm-up)")
    parser.add_argument("--size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--copies", type=int, default=4, help="each training row this many times")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for the platform run")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is warm-up")
    spec_text = SPEC.read_text()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = Path(tmp) / "digits"
        make_digits(data, size=args.size)
        manifest = replicate(data / "train.tsv", args.copies, data / "train-x.tsv")
        x, y = load_manifest(manifest, NAMES, parse_spec(SPEC.name, spec_text).transform)
        print(f"data: {len(y)} rows ({args.copies} copies of the digits), "
              f"input {list(x.shape[1:])}, {SPEC.name}, batch {BATCH}, "
              f"{args.epochs} epochs")  # fmt: skip
        platform, shown = platform_run(manifest, args.epochs, spec_text, args.timeout)
        plain = plain_loop(x, y, len(NAMES), args.epochs, spec_text)
    if len(platform) != args.epochs:
        print(f"error: the platform reported {len(platform)} epochs, not {args.epochs}",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(1)
    print(f"\n{'epoch':>5}  {'platform s':>10}  {'plain s':>8}")
    for i, (a, b) in enumerate(zip(platform, plain, strict=True), 1):
        print(f"{i:>5}  {a:>10.3f}  {b:>8.3f}" + ("  (warm-up, excluded)" if i == 1 else ""))
    p, q = median(platform[1:]), median(plain[1:])
    print(f"median  {p:>10.3f}  {q:>8.3f}")
    last = shown["metrics"][-1]
    print(f"platform final train_loss {last['train_loss']:.4f}, "
          f"{last['samples_per_s']:.0f} samples/s")  # fmt: skip
    ratio = p / q
    met = verdict(ratio <= TARGET)
    print(f"ratio platform/plain = {ratio:.2f} (target <= {TARGET:.2f}): {met}")


if __name__ == "__main__":
    main()
