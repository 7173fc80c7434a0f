"""Linked datasets on first use: ingest the manifest's files into this node's cache, once.

Nothing is copied at link time. The first reader on a node takes a file lock, ingests
into NCLOUD_CACHE_DIR/linked/<key>/ and writes index.json last (the completion
marker); readers after it, in any process on that node, find the index and go straight
to the shards. The key covers the manifest's URL and its size and modification time, so
a changed manifest is ingested again.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from cluster.core import storage
from jobs.datasets import ingest
from jobs.datasets.cache import locked
from jobs.datasets.shards import read_index
from ncloud.errors import InvalidInput, NotFound
from ncloud.manifest import read_manifest
from ncloud.settings import settings


def cache_key(manifest_url: str) -> str:
    fs, path = storage.filesystem(manifest_url)
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise InvalidInput(f"linked manifest {manifest_url} no longer exists") from exc
    stamp = f"{manifest_url}|{info.get('size')}|{info.get('ETag') or info.get('mtime')}"
    return hashlib.sha256(stamp.encode()).hexdigest()[:24]


def ensure_cached(manifest_url: str, cache_dir: Path | None = None) -> str:
    """The local dataset URL of a linked manifest, ingesting it here first if needed."""
    root = (cache_dir or settings().cache_dir) / "linked"
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(manifest_url)
    target = root / key
    with locked(root / f"{key}.lock"):
        try:
            read_index(str(target))
            return str(target)
        except NotFound:
            pass
        if target.exists():  # a reader died half-way: start over
            shutil.rmtree(target)
        manifest = read_manifest(manifest_url, max_bytes=settings().max_file_bytes)
        try:
            ingest.ingest_local(manifest, str(target), settings().max_file_bytes)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return str(target)
