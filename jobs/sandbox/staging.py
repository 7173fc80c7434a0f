"""Training's I/O on the trusted side: a run's inputs into its sandbox, its outputs back out.

In: each dataset's index.json and shards (hard links to this node's cache, so nothing
is copied), and, to resume, the run's checkpoints. Out: meta.json, model.pt and the
checkpoints the run wrote, mirrored to the run's storage prefix (data before index;
pruned ones removed), read without following links (jobs.sandbox.outputs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cluster.core import storage
from jobs.datasets.cache import ensure_local
from jobs.datasets.shards import read_index, shard_url
from jobs.models import checkpoints
from jobs.sandbox import outputs
from jobs.sandbox.policy import Policy
from jobs.training.config import TrainConfig
from ncloud.errors import InvalidInput

CHECKPOINT = re.compile(r"ckpt-\d{4,9}\.(pt|json)")
MAX_META = 1 << 20
SYNC_EVERY_S = 0.2
MAX_FILE = 1 << 40
KINDS = ("image", "text", "audio", "features")
META_KEYS = ("spec", "num_classes", "input_shape", "classes", "transform", "ends_in_softmax",
             "kind", "dataset_shape")  # fmt: skip


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def stage_dataset(url: str, cache_dir: Path, target: Path) -> None:
    """An ingested dataset as a local folder: index.json and shards/, from the node cache."""
    index = read_index(url)
    (target / "shards").mkdir(parents=True, exist_ok=True)
    for info in index.shards:
        local = ensure_local(shard_url(url, info.name), info.sha256, cache_dir)
        _link_or_copy(local, target / "shards" / info.name)
    fs, root = storage.filesystem(url)
    (target / "index.json").write_bytes(fs.cat_file(f"{root.rstrip('/')}/index.json"))


def stage_checkpoints(run_url: str, target: Path) -> None:
    """The run's stored checkpoints into target/checkpoints (to resume from)."""
    (target / "checkpoints").mkdir(parents=True, exist_ok=True)
    for index in checkpoints.list_checkpoints(run_url):
        epoch = int(index["epoch"])
        for suffix in ("pt", "json"):
            url = checkpoints.checkpoint_url(run_url, epoch, suffix)
            with open(target / "checkpoints" / f"ckpt-{epoch:04d}.{suffix}", "wb") as out:
                for chunk in storage.read_chunks(url):
                    out.write(chunk)


def sandbox_config(policy: Policy, cfg: TrainConfig) -> TrainConfig:
    """Stage what cfg names into the policy's slot; the config the sandbox sees (its own
    paths, no cache and no process group: the trusted side holds those)."""
    cache_dir = Path(str(cfg.cache_dir))
    urls: dict[str, str | None] = {}
    for role, url in (("train", cfg.train_url), ("valid", cfg.valid_url)):
        urls[role] = url
        if url:
            stage_dataset(url, cache_dir, policy.slot / "in" / role)
            urls[role] = policy.inside(policy.slot / "in" / role)
    run_dir = policy.slot / "out" / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.run_url and (cfg.resume or cfg.resume_epoch is not None):
        stage_checkpoints(cfg.run_url, run_dir)
    return replace(
        cfg,
        train_url=urls["train"] or "",
        valid_url=urls["valid"],
        run_url=policy.inside(run_dir) if cfg.run_url else "",
        cache_dir=None,
        dist_url=None,
    )


def expected_meta(cfg: TrainConfig) -> dict[str, Any]:
    """What the trusted side knows of a run's meta.json before the run writes it."""
    from jobs.models.specs import parse_spec
    from jobs.training.data import num_classes

    index = read_index(cfg.train_url)
    spec = parse_spec(cfg.spec_name, cfg.spec_text)
    return {
        "spec": spec.name,
        "num_classes": num_classes(index),
        "classes": index.classes,
        "transform": spec.transform,
        "kind": index.kind,
        "dataset_shape": list(index.shape or []) or None,
    }


def check_meta(data: bytes, expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """meta.json as the run wrote it, refused unless it has the shape the predictor reads
    (and, where the trusted side knows them, the values it expects); only known keys."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"meta.json is not JSON: {exc}") from exc
    n, shape = meta.get("num_classes") if isinstance(meta, dict) else None, None
    if isinstance(meta, dict):
        shape = meta.get("input_shape")
    ok = (
        type(n) is int
        and 1 <= n <= 1_000_000
        and isinstance(shape, list)
        and 1 <= len(shape) <= 8
        and all(type(d) is int and 1 <= d <= 1 << 20 for d in shape)
        and meta.get("kind") in KINDS
        and isinstance(meta.get("ends_in_softmax"), bool)
        and (meta.get("transform") is None or isinstance(meta.get("transform"), dict))
    )
    classes = meta.get("classes") if isinstance(meta, dict) else None
    if ok and classes is not None:
        ok = (
            isinstance(classes, list)
            and len(classes) == n
            and all(isinstance(c, str) for c in classes)
        )
    shape = meta.get("dataset_shape") if ok else None
    if shape is not None:
        ok = (
            isinstance(shape, list)
            and 1 <= len(shape) <= 4
            and all(type(d) is int and 1 <= d <= 1 << 16 for d in shape)
        )
    for key, value in (expected or {}).items():
        ok = ok and meta.get(key) == value
    if not ok:
        raise InvalidInput("meta.json does not describe a trained network")
    return {k: meta.get(k) for k in META_KEYS}


class Mirror:
    """Copies a sandbox's out/run folder to the run's storage prefix, new files only."""

    def __init__(self, run_dir: Path, run_url: str, expected: dict[str, Any] | None) -> None:
        self.run_dir, self.run_url, self.expected = run_dir, run_url, expected
        self.sent: dict[str, tuple[int, int]] = {}
        self.synced_at = 0.0

    def _send(self, found: outputs.Found) -> None:
        if self.sent.get(found.name) == (found.size, found.mtime_ns):
            return
        url = storage.join(self.run_url, found.name)
        if found.name == "meta.json":
            data = check_meta(outputs.read(self.run_dir, found.name, MAX_META), self.expected)
            storage.write_stream(url, [json.dumps(data, indent=1).encode()], MAX_META)
        else:
            chunks = outputs.chunks(self.run_dir, found.name, MAX_FILE)
            storage.write_stream(url, chunks, MAX_FILE)
        self.sent[found.name] = (found.size, found.mtime_ns)

    def sync(self, final: bool = False) -> None:
        """meta.json, then each new checkpoint (.pt before its .json), then model.pt at the end;
        stored checkpoints the run pruned are removed."""
        if not self.run_url or (not final and time.monotonic() - self.synced_at < SYNC_EVERY_S):
            return  # a run that reports checkpoints in a flood is mirrored 5 times a second
        self.synced_at = time.monotonic()
        files = {f.name: f for f in outputs.walk(self.run_dir)}
        if "meta.json" in files:
            self._send(files["meta.json"])
        local = sorted(
            n.split("/", 1)[1]
            for n in files
            if n.startswith("checkpoints/") and CHECKPOINT.fullmatch(n.split("/", 1)[1])
        )
        for name in sorted(local, key=lambda n: (n.rsplit(".", 1)[0], n.endswith(".json"))):
            self._send(files[f"checkpoints/{name}"])
        fs, root = storage.filesystem(storage.join(self.run_url, "checkpoints"))
        if fs.exists(root):
            for path in sorted(fs.ls(root, detail=False)):
                name = str(path).rstrip("/").rsplit("/", 1)[-1]
                if CHECKPOINT.fullmatch(name) and name not in local:
                    fs.rm(path)
                    self.sent.pop(f"checkpoints/{name}", None)
        if final and "model.pt" in files:
            self._send(files["model.pt"])
