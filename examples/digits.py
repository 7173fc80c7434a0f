"""Make the bundled example dataset: scikit-learn's 8x8 digits as PNG files + aeon manifests.

    python -m examples.digits OUT_DIR [--size 16]

Writes OUT_DIR/{train,valid}/*.png, OUT_DIR/train.tsv and OUT_DIR/valid.tsv
(`@FILE\\t@STRING` with class names "zero".."nine"), and OUT_DIR/holdout/ with a few
images for predictions. Nothing is downloaded: the data ships inside scikit-learn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_digits(
    out: Path, size: int = 16, valid_fraction: float = 0.2, holdout: int = 10, seed: int = 0
) -> dict[str, int]:
    """Write the PNGs and manifests; returns the row count of each split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    images = (digits.images[order] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target[order]
    n_hold = holdout
    n_valid = int((len(labels) - n_hold) * valid_fraction)
    splits = {
        "holdout": range(0, n_hold),
        "valid": range(n_hold, n_hold + n_valid),
        "train": range(n_hold + n_valid, len(labels)),
    }
    counts = {}
    for split, rows in splits.items():
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["@FILE\t@STRING"]
        for i in rows:
            name = f"{split}/{i:04d}.png"
            image = Image.fromarray(images[i], mode="L")
            image = image.resize((size, size), Image.Resampling.NEAREST)
            image.save(out / name)
            lines.append(f"{name}\t{NAMES[labels[i]]}")
        (out / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        counts[split] = len(rows)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=16)
    args = parser.parse_args()
    print(make_digits(args.out, args.size))


if __name__ == "__main__":
    main()
