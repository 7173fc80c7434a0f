"""Benchmark: ShardLoader against torch DataLoader, Ray Data and an in-memory ceiling."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

if __package__ in (None, ""):  # `python bench/loader.py` as well as `python -m bench.loader`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.datasets.loader import ShardLoader
from jobs.datasets.shards import ShardWriter
from jobs.datasets.transforms import build_transform

BATCH = 256
OURS, TORCH, CEILING = "ncloud ShardLoader", "torch DataLoader (2w)", "ceiling (in memory)"
SPEC = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
Results = dict[str, dict[str, tuple[float, float]]]
Runner = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def generate(root: Path, n: int, size: int, ext: str) -> Path:
    """n size x size RGB images under root/img plus an aeon manifest; returns the manifest."""
    manifest = root / "manifest.tsv"
    if manifest.exists() and len(manifest.read_text().splitlines()) == n + 1:
        return manifest
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["@FILE\t@ASCII_INT"]
    for i in range(n):
        label = i % 10
        # smooth colour gradients plus noise: compresses like a photo, not like random bytes
        yy, xx = np.mgrid[0:size, 0:size]
        base = (xx * (label + 1) + yy * (9 - label)) * 255 // (size * 10)
        noise = rng.integers(0, 48, (size, size, 3))
        pixels = np.clip(base[..., None] + noise + rng.integers(0, 160, 3), 0, 255)
        name = f"img/{i:06d}.{ext}"
        Image.fromarray(pixels.astype(np.uint8)).save(root / name, quality=90)
        lines.append(f"{name}\t{label}")
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def read_manifest(manifest: Path) -> list[tuple[str, int]]:
    rows = [line.split("\t") for line in manifest.read_text().splitlines()[1:] if line]
    return [(str(manifest.parent / f), int(y)) for f, y in rows]


def decode(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def ingest(manifest: Path, ds_url: str) -> np.ndarray:
    """Decode every image into shards (the bench's stand-in for the real ingest); the pixels."""
    images = []
    with ShardWriter(ds_url, "image", [str(k) for k in range(10)]) as writer:
        for row, (path, y) in enumerate(read_manifest(manifest)):
            pixels = decode(path)
            writer.add(pixels.tobytes(), list(pixels.shape), y, row)
            images.append(pixels)
    return np.stack(images)


class PillowDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """The usual baseline: open each file with Pillow, transform one image at a time."""

    def __init__(self, rows: list[tuple[str, int]]) -> None:
        self.rows, self.transform = rows, build_transform(SPEC, train=False)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, y = self.rows[i]
        return self.transform(decode(path)[None])[0], y


def ours(ds_url: str, cache: Path) -> Runner:
    return lambda epoch: ShardLoader(
        ds_url, batch_size=BATCH, shuffle_seed=0, epoch=epoch, transform=SPEC, cache_dir=cache
    )


def torch_loader(manifest: Path) -> Runner:
    loader = torch.utils.data.DataLoader(
        PillowDataset(read_manifest(manifest)),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
    )
    return lambda epoch: loader


def ray_data(manifest: Path) -> Runner:
    import pyarrow.csv
    import ray.data

    root = str(manifest.parent)

    def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = np.stack([decode(f"{root}/{f}") for f in batch["@FILE"]])
        x = build_transform(SPEC, train=False)(pixels).numpy()
        return {"x": x, "y": batch["@ASCII_INT"].astype(np.int64)}

    ds = ray.data.read_csv(
        str(manifest), parse_options=pyarrow.csv.ParseOptions(delimiter="\t")
    ).map_batches(decode_batch, batch_size=BATCH, batch_format="numpy")

    def run(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for batch in ds.iter_torch_batches(batch_size=BATCH, local_shuffle_buffer_size=None):
            yield batch["x"], batch["y"]

    return run


def ceiling(pixels: np.ndarray) -> Runner:
    transform = build_transform(SPEC, train=False)
    rng = np.random.default_rng(0)

    def run(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(pixels), BATCH):
            yield transform.fixed(pixels[i : i + BATCH], rng), torch.zeros(0)

    return run


def rate(runner: Runner, epoch: int, expect: int) -> float:
    start, n = time.perf_counter(), 0
    for x, _ in runner(epoch):
        n += x.shape[0]
    if n != expect:
        raise RuntimeError(f"a loader gave {n} images, not {expect}")
    return n / (time.perf_counter() - start)


def measure(name: str, runner: Runner, n: int) -> tuple[float, float]:
    cold, warm = rate(runner, 0, n), rate(runner, 1, n)
    print(f"  {name:<22} cold {cold:>9,.0f}  warm {warm:>9,.0f} images/s", file=sys.stderr)
    return cold, warm


def prepare(root: Path, n: int, size: int, ext: str) -> tuple[Path, str, np.ndarray]:
    """Generate (unless kept from an earlier --dir run) and ingest one image set."""
    t = time.perf_counter()
    manifest = generate(root / f"{size}px", n, size, ext)
    ds_url = str(root / f"{size}px-ds")
    shutil.rmtree(ds_url, ignore_errors=True)
    pixels = ingest(manifest, ds_url)
    took = time.perf_counter() - t
    print(f"{n} {size}x{size} {ext}: made and ingested in {took:.1f} s", file=sys.stderr)
    return manifest, ds_url, pixels


def run_ray(made: dict[str, tuple[Path, str, np.ndarray]], results: Results) -> None:
    """Ray Data last, on its own local cluster, so its processes do not slow the others."""
    import ray
    import ray.data

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        for name, (manifest, _, pixels) in made.items():
            print(f"{name}:", file=sys.stderr)
            results[name]["Ray Data"] = measure("Ray Data", ray_data(manifest), len(pixels))
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=20_000, help="32x32 PNG images")
    parser.add_argument("--large", type=int, default=2_000, help="224x224 JPEG images")
    parser.add_argument("--dir", type=Path, help="keep generated data here (default: a temp dir)")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Data")
    args = parser.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="ncloud-bench-"))
    sets = {"32x32 PNG": (args.small, 32, "png"), "224x224 JPEG": (args.large, 224, "jpg")}
    results: Results = {}
    try:
        made = {name: prepare(root, *spec) for name, spec in sets.items()}
        for name, (manifest, ds_url, pixels) in made.items():
            print(f"{name}:", file=sys.stderr)
            n, cache = len(pixels), root / f"cache-{name.split()[0]}"
            shutil.rmtree(cache, ignore_errors=True)  # cold: an empty node cache
            results[name] = {
                OURS: measure(OURS, ours(ds_url, cache), n),
                TORCH: measure(TORCH, torch_loader(manifest), n),
                CEILING: measure(CEILING, ceiling(pixels), n),
            }
        if not args.no_ray:
            run_ray(made, results)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)


def print_table(results: Results) -> None:
    names = [n for n in (OURS, TORCH, "Ray Data", CEILING) if n in next(iter(results.values()))]
    head = "".join(f"{s + ' cold':>19}{s + ' warm':>19}" for s in results)
    print(f"{'images/s':<24}{head}")
    for name in names:
        cells = "".join(f"{r[name][0]:>19,.0f}{r[name][1]:>19,.0f}" for r in results.values())
        print(f"{name:<24}{cells}")
    for other in names[1:]:
        cells = "".join(
            f"{r[OURS][0] / r[other][0]:>18.2f}x{r[OURS][1] / r[other][1]:>18.2f}x"
            for r in results.values()
        )
        print(f"{'ours / ' + other.split(' (')[0]:<24}{cells}")


if __name__ == "__main__":
    main()
