"""A run's volume on local disk: pulled before the run, what it changed pushed back after.

Pulling notes each file's size, mtime and SHA-256 as it is written, so pushing reads no
stored bytes back: a file whose size and mtime are as pulled is skipped unread (rsync's
quick check), and one rewritten with the same bytes is skipped after hashing it locally.
Files the run deleted stay in the volume.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cluster.core import storage
from cluster.core.store import Store
from jobs.sandbox import outputs
from jobs.volumes import state as volumes

CHUNK = 1 << 20


@dataclass(frozen=True)
class Pulled:
    size: int
    mtime_ns: int
    sha256: str


def pull(store: Store, tenant: str, volume_id: int, into: Path) -> dict[str, Pulled]:
    """Every file of the volume under `into`; what each looked like once written."""
    base = volumes.volume_url(tenant, volume_id)
    pulled: dict[str, Pulled] = {}
    for name in volumes.list_volume_files(store, tenant, volume_id):
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(target, "wb") as out:
            for chunk in storage.read_chunks(storage.join(base, name)):
                digest.update(chunk)
                out.write(chunk)
        st = target.stat()
        pulled[name] = Pulled(st.st_size, st.st_mtime_ns, digest.hexdigest())
    return pulled


def changed(source: Path, found: outputs.Found, was: Pulled | None) -> bool:
    """True for a file that was not pulled, or whose bytes differ from what was pulled."""
    if was is None or found.size != was.size:
        return True
    if found.mtime_ns == was.mtime_ns:
        return False
    digest = hashlib.sha256()
    for chunk in outputs.chunks(source, found.name):
        digest.update(chunk)
    return digest.hexdigest() != was.sha256


def push(store: Store, tenant: str, volume_id: int, source: Path, pulled: dict[str, Pulled]) -> int:
    """Upload the files under `source` that the run wrote or changed; returns their count.

    The run owned `source`: links and anything but regular files are never followed.
    """
    sent = 0
    for found in outputs.walk(source):
        if changed(source, found, pulled.get(found.name)):
            volumes.put_file(
                store, tenant, volume_id, found.name, outputs.chunks(source, found.name)
            )
            sent += 1
    return sent
