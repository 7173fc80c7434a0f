"""Batch transforms built from a JSON spec, shared by training and prediction.

Spec keys (all optional; ``{}`` and ``None`` mean the defaults):

- ``kind``: "image" (default), "text", "audio" or "features" (the loader fills in the dataset's).
- image: ``resize`` [H, W] (bilinear, antialiased, first); ``crop`` [h, w] (random when training,
  centred otherwise); ``pad`` (zero padding before the random crop, training only); ``flip``
  (random horizontal flip, training only); ``mean`` and ``std`` per channel on the 0-1 scale.
  In: uint8 [N, H, W, C]. Out: float32 [N, C, h, w] = (pixel / 255 - mean) / std.
- text: ``length`` L. In: UTF-8 bytes. Out: int64 [N, L] byte values, 0-padded, truncated
  (without ``length``: padded to the longest in the batch).
- audio: ``length`` L frames. In: int16 [frames, C]. Out: float32 [N, C, L] in [-1, 1),
  0-padded or truncated (without ``length``: padded to the longest in the batch).
- features: ``length`` d pads with 0 / truncates. In and out: float32 [N, d].

The arithmetic runs in numpy: it releases the GIL and stays on one core, so a loader thread
never fights the training step's OpenMP pool (torch's two-thread elementwise ops collapse
when the cores are busy). Only resizing uses torch (one vectorised interpolate per batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from ncloud.errors import InvalidInput

KEYS = {
    "image": {"kind", "resize", "crop", "pad", "flip", "mean", "std"},
    "text": {"kind", "length"},
    "audio": {"kind", "length"},
    "features": {"kind", "length"},
}
Batch = np.ndarray | torch.Tensor | Sequence[np.ndarray]


def _pair(value: Any, key: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not (isinstance(value, list | tuple) and len(value) == 2):
        raise InvalidInput(f"transform {key!r} must be an int or [height, width], not {value!r}")
    h, w = (int(v) for v in value)
    if h < 1 or w < 1:
        raise InvalidInput(f"transform {key!r} must be positive, not {value!r}")
    return h, w


def _floats(value: Any, key: str, default: float) -> np.ndarray:
    if value is None:
        return np.array([default], np.float32)
    values = value if isinstance(value, list | tuple) else [value]
    try:
        out = np.array([float(v) for v in values], np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"transform {key!r} must be numbers, not {value!r}") from exc
    if out.size not in (1, 3) or (key == "std" and (out <= 0).any()):
        raise InvalidInput(f"transform {key!r} needs 1 or 3 (positive for std) values")
    return out


class Transform:
    """Turns one batch of decoded examples into a tensor; see the module docstring."""

    kind = "features"

    def __init__(self, spec: Mapping[str, Any], train: bool) -> None:
        self.train = train
        length = spec.get("length")
        if length is not None and (not isinstance(length, int) or length < 1):
            raise InvalidInput(f"transform 'length' must be a positive int, not {length!r}")
        self.length: int | None = length

    def __call__(self, x: Batch, rng: np.random.Generator | None = None) -> torch.Tensor:
        """A batch: an array/tensor [N, ...] of one shape, or a list of arrays of any shapes."""
        rng = rng if rng is not None else np.random.default_rng()
        if isinstance(x, torch.Tensor):
            x = x.numpy()
        if isinstance(x, np.ndarray):
            return self.fixed(x, rng)
        return self.items(list(x), rng)

    def fixed(self, x: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if x.ndim == 2 and self.length in (None, x.shape[1]):
            return torch.from_numpy(np.array(x, np.float32))  # a copy: x may be read-only
        return self.items(list(x), rng)

    def items(self, xs: list[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(self._pad([np.asarray(v, np.float32) for v in xs], 0, np.float32))

    def _pad(self, xs: list[np.ndarray], axis: int, dtype: type) -> np.ndarray:
        """Stack along a new first axis, padding/truncating `axis` to the length."""
        longest = max((v.shape[axis] for v in xs), default=0)
        n = self.length if self.length is not None else longest
        rest = xs[0].shape[:axis] + xs[0].shape[axis + 1 :] if xs else ()
        out = np.zeros((len(xs), *rest[:axis], n, *rest[axis:]), dtype)
        for i, v in enumerate(xs):
            k = min(n, v.shape[axis])
            out[i].swapaxes(0, axis)[:k] = v.swapaxes(0, axis)[:k]
        return out


class TextTransform(Transform):
    kind = "text"

    def fixed(self, x: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return self.items(list(x), rng)

    def items(self, xs: list[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(self._pad([np.asarray(v, np.uint8) for v in xs], 0, np.int64))


class AudioTransform(Transform):
    kind = "audio"

    def fixed(self, x: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.length is not None and self.length != x.shape[1]:
            return self.items(list(x), rng)
        out = np.empty((x.shape[0], x.shape[2], x.shape[1]), np.float32)
        np.multiply(x.transpose(0, 2, 1), np.float32(1 / 32768), out=out)
        return torch.from_numpy(out)

    def items(self, xs: list[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
        out = self._pad([np.asarray(v, np.int16) for v in xs], 0, np.float32)
        return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 2, 1)) * (1 / 32768))


class ImageTransform(Transform):
    kind = "image"

    def __init__(self, spec: Mapping[str, Any], train: bool) -> None:
        super().__init__({}, train)
        self.resize = _pair(spec.get("resize"), "resize")
        self.crop = _pair(spec.get("crop"), "crop")
        self.pad = int(spec.get("pad") or 0)
        if self.pad < 0:
            raise InvalidInput(f"transform 'pad' must be >= 0, not {self.pad}")
        self.flip = bool(spec.get("flip", False))
        mean, std = _floats(spec.get("mean"), "mean", 0.0), _floats(spec.get("std"), "std", 1.0)
        self.scale = (1 / (255 * std)).astype(np.float32)
        self.bias = (-mean / std).astype(np.float32)

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        """[C, h, w] of one transformed image of the given input size."""
        height, width = self.resize or (height, width)
        return (channels, *(self.crop or (height, width)))

    def fixed(self, x: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if x.ndim != 4 or x.dtype != np.uint8 or x.shape[3] not in (1, 3):
            raise InvalidInput(f"images must be uint8 [N, H, W, 1|3], not {x.dtype} {x.shape}")
        c = x.shape[3]
        if self.scale.size not in (1, c):
            raise InvalidInput(f"mean/std have {self.scale.size} values for {c}-channel images")
        if self.resize is not None and x.shape[1:3] != self.resize:
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
            t = F.interpolate(t, size=self.resize, mode="bilinear", antialias=True)
            x = t.permute(0, 2, 3, 1).numpy()
        chw = self._crop_flip(x, rng)  # uint8 [N, C, h, w], any strides
        out = np.empty(chw.shape, np.float32)
        np.multiply(chw, self.scale.reshape(1, -1, 1, 1), out=out)
        out += self.bias.reshape(1, -1, 1, 1)
        return torch.from_numpy(out)

    def _crop_flip(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, height, width = x.shape[:3]
        h, w = self.crop or (height, width)
        if not self.train:
            if h > height or w > width:
                raise InvalidInput(f"crop {h}x{w} is larger than the {height}x{width} images")
            top, left = (height - h) // 2, (width - w) // 2
            return x[:, top : top + h, left : left + w].transpose(0, 3, 1, 2)
        p = self.pad
        if h > height + 2 * p or w > width + 2 * p:
            raise InvalidInput(f"crop {h}x{w} is larger than the padded {height}x{width} images")
        if p:
            x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        if (h, w) == x.shape[1:3]:
            out = x.transpose(0, 3, 1, 2)
            if self.flip:
                out = out.copy()
        else:  # every image its own offset, in one gather: windows[i, top_i, left_i]
            windows = sliding_window_view(x, (h, w), axis=(1, 2))
            tops = rng.integers(0, x.shape[1] - h + 1, n)
            lefts = rng.integers(0, x.shape[2] - w + 1, n)
            out = windows[np.arange(n), tops, lefts]
        if self.flip:
            mirrored = rng.random(n) < 0.5
            out[mirrored] = out[mirrored, :, :, ::-1]
        return out

    def items(self, xs: list[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
        if not xs:
            raise InvalidInput("an empty list of images")
        if len({v.shape for v in xs}) == 1:
            return self.fixed(np.stack(xs), rng)
        if self.resize is None:
            raise InvalidInput("images of different sizes need a 'resize' in the transform")
        return self.fixed(np.concatenate([self._resized(v) for v in xs]), rng)

    def _resized(self, image: np.ndarray) -> np.ndarray:
        """One [1, H, W, C] image at the resize size, the same arithmetic as a batch."""
        t = torch.from_numpy(np.ascontiguousarray(image)[None]).permute(0, 3, 1, 2)
        t = F.interpolate(t, size=self.resize, mode="bilinear", antialias=True)
        return t.permute(0, 2, 3, 1).numpy()


def build_transform(
    spec: Mapping[str, Any] | None, train: bool, kind: str | None = None
) -> Transform:
    """The transform a JSON spec describes; train=True turns on the random crop and flip."""
    spec = dict(spec or {})
    kind = kind or str(spec.get("kind", "image"))
    if kind not in KEYS:
        raise InvalidInput(f"transform kind {kind!r} is not one of {sorted(KEYS)}")
    unknown = set(spec) - KEYS[kind]
    if unknown:
        raise InvalidInput(
            f"unknown {kind} transform keys {sorted(unknown)}; known: {sorted(KEYS[kind])}"
        )
    classes: dict[str, type[Transform]] = {
        "image": ImageTransform,
        "text": TextTransform,
        "audio": AudioTransform,
        "features": Transform,
    }
    return classes[kind](spec, train)
