"""A trained model, loaded for prediction: decode inputs as training did, forward, top-k.

Deployments (serve/deployments/replica.py) and batch prediction share it. What the network saw
in training comes from the run's meta.json: the dataset's kind, its example shape and
class names, and the transform, applied here in its eval form. Outputs become
probabilities with a softmax unless the network already ends in one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cluster.core import storage
from jobs.datasets.decoders import decode_audio, decode_features, decode_image, decode_text
from jobs.datasets.transforms import build_transform
from jobs.models import checkpoints, specs
from jobs.sandbox.network import SandboxedNetwork
from jobs.sandbox.staging import check_meta
from ncloud.errors import Conflict, InvalidInput, ServerError

DEFAULT_K = 5


def pinned_checkpoint(model_url: str) -> int | None:
    """Which weights the model has now, without loading them: the final ones (None), else the
    newest checkpoint; Conflict when it has neither."""
    fs, path = storage.filesystem(storage.join(model_url, "model.pt"))
    if fs.exists(path):
        return None
    found = checkpoints.list_checkpoints(model_url)
    if not found:
        raise Conflict("this model has no weights yet: train it (or wait for an epoch)")
    return int(found[-1]["epoch"])


def read_bytes_of_meta(model_url: str) -> bytes:
    url = storage.join(model_url, "meta.json")
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        raise Conflict("this model has not trained yet: it has no weights to serve")
    return storage.read_bytes(url)


def read_meta(model_url: str) -> dict[str, Any]:
    """The run's meta.json, checked (the run's sandbox wrote it)."""
    return check_meta(read_bytes_of_meta(model_url))


class Predictor:
    def __init__(
        self,
        model_url: str,
        spec_name: str,
        spec_text: str,
        checkpoint: int | None = None,
        device: str = "cpu",
        max_pixels: int = 89_478_485,
        *,
        tenant_id: int,
        gpus: tuple[str, ...] = (),
        mounts: Sequence[tuple[int, str]] = (),
        pull: Callable[[int, Path], object] | None = None,
    ) -> None:
        self.meta = check_meta(read_bytes_of_meta(model_url))
        specs.parse_spec(spec_name, spec_text)  # runs nothing: a stored spec that no longer parses
        self.num_classes = int(self.meta["num_classes"])
        self.input_shape = tuple(int(d) for d in self.meta["input_shape"])
        self.network = SandboxedNetwork(
            model_url,
            (spec_name, spec_text),
            self.meta,
            checkpoint,
            tenant_id,
            device,
            gpus,
            mounts,
            pull,
        )
        self.checkpoint = self.network.checkpoint
        self.device = torch.device(self.network.device)
        self.ends_in_softmax = bool(self.meta.get("ends_in_softmax"))
        self.kind = str(self.meta.get("kind", "image"))
        self.classes: list[str] | None = self.meta.get("classes")
        raw = self.meta.get("dataset_shape")
        self.dataset_shape = tuple(int(d) for d in raw) if raw else None
        self.transform = build_transform(self.meta.get("transform"), train=False, kind=self.kind)
        self.max_pixels = max_pixels

    # -- inputs --------------------------------------------------------------------------

    def decode(self, name: str, data: bytes) -> Any:
        """One uploaded input as the dataset stored it; errors name the input."""
        where = f"input {name!r}"
        if not data:
            raise InvalidInput(f"{where} is empty")
        if self.kind == "image":
            return self._fit_image(decode_image(data, where, self.max_pixels), where)
        if self.kind == "text":
            return np.frombuffer(decode_text(data, where).encode("utf-8"), np.uint8)
        if self.kind == "audio":
            return decode_audio(data, where)
        return self._features(name, data, where)

    def _fit_image(self, image: np.ndarray, where: str) -> np.ndarray:
        """Training's channels and size, so an input of another size still works."""
        if self.dataset_shape is None or len(self.dataset_shape) != 3:
            return image
        h, w, c = self.dataset_shape
        if image.shape[2] != c:
            if c == 1:
                gray = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
                image = gray.round().clip(0, 255).astype(np.uint8)[..., None]
            else:
                image = np.repeat(image[..., :1], c, axis=2)
        if image.shape[:2] != (h, w):
            t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
            t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", antialias=True)
            image = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        return image

    def _features(self, name: str, data: bytes, where: str) -> np.ndarray:
        if name.lower().endswith(".json") or data.lstrip()[:1] == b"[":
            try:
                values = np.asarray(json.loads(data), dtype=np.float32)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"{where} is not a JSON array of numbers") from exc
            if values.ndim != 1 or not np.isfinite(values).all():
                raise InvalidInput(f"{where} must be a flat JSON array of finite numbers")
        else:
            values = decode_features(name, data, where)
        want = self.input_shape[-1]
        if values.shape[0] != want:
            raise InvalidInput(f"{where} has {values.shape[0]} features; the model takes {want}")
        return values

    # -- outputs -------------------------------------------------------------------------

    @torch.no_grad()
    def probabilities(self, inputs: list[Any]) -> torch.Tensor:
        """[N, classes] for N decoded inputs, in one forward pass."""
        return self._softmax(self.network(self._batch(inputs)))

    async def probabilities_async(self, inputs: list[Any]) -> torch.Tensor:
        """`probabilities` for a coroutine: its event loop goes on during the forward."""
        return self._softmax(await self.network.call_async(self._batch(inputs)))

    def _batch(self, inputs: list[Any]) -> torch.Tensor:
        return self.transform(inputs, np.random.default_rng(0))

    @torch.no_grad()
    def _softmax(self, out: torch.Tensor) -> torch.Tensor:
        if out.ndim != 2 or out.shape[1] != self.num_classes:
            raise ServerError(f"the network answered shape {list(out.shape)}, not [N, classes]")
        return out.float() if self.ends_in_softmax else torch.softmax(out.float(), dim=1)

    def top_k(self, probs: torch.Tensor, k: int) -> list[list[dict[str, Any]]]:
        """Each row's k most likely classes, sorted: index, label (if named), probability."""
        k = self.clamp_k(k)
        values, indexes = probs.cpu().topk(k, dim=1)
        return [
            [
                {
                    "index": int(i),
                    "label": self.classes[int(i)] if self.classes else None,
                    "probability": float(p),
                }
                for p, i in zip(row_p, row_i, strict=True)
            ]
            for row_p, row_i in zip(values.tolist(), indexes.tolist(), strict=True)
        ]

    def probe(self) -> None:
        """One forward of an all-zero example of the training shape (a health check)."""
        zero = self._probe_input()
        if zero is not None:
            self.probabilities([zero])

    async def probe_async(self) -> None:
        zero = self._probe_input()
        if zero is not None:
            await self.probabilities_async([zero])

    def _probe_input(self) -> np.ndarray | None:
        if self.dataset_shape is not None and self.kind == "image":
            return np.zeros(self.dataset_shape, np.uint8)
        return None

    def close(self) -> None:
        self.network.close()

    def clamp_k(self, k: int) -> int:
        """k must be at least 1; above the number of classes it is clamped to it."""
        if k < 1:
            raise InvalidInput(f"k must be at least 1, not {k}")
        return min(k, self.num_classes)
