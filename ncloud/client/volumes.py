"""The client's volumes calls (Client.volumes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from ncloud import responses
from ncloud.client.transport import Transport
from ncloud.errors import InvalidInput

JSON = Any


def _file_route(volume_id: int, path: str) -> str:
    # Quote everything but "/" so that names with spaces, '#', '?' or '%' arrive intact.
    return f"/volumes/{int(volume_id)}/files/{quote(path, safe='/')}"


def local_target(root: Path, path: str) -> Path:
    """Where a volume file named path goes under root; refuses names that would leave it."""
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or any(p in ("..", ".") for p in parts):
        raise InvalidInput(
            f"the server sent a file name {path!r} outside the volume; not saving it"
        )
    target = root.joinpath(*parts)
    if not target.resolve().is_relative_to(root.resolve()):
        raise InvalidInput(f"{target} would leave {root}; not saving it")
    return target


class Volumes:
    def __init__(self, client: Transport) -> None:
        self._c = client

    def create(self, name: str) -> responses.Volume:
        return self._c.call(responses.Volume, "POST", "/volumes", json={"name": name})

    def list(self) -> list[responses.Volume]:
        return self._c.call(list[responses.Volume], "GET", "/volumes")

    def show(self, volume_id: int) -> responses.VolumeDetail:
        """The volume with its file_list: [{path, bytes}, ...]."""
        return self._c.call(responses.VolumeDetail, "GET", f"/volumes/{int(volume_id)}")

    def remove(self, volume_id: int) -> JSON:
        return self._c.request("DELETE", f"/volumes/{int(volume_id)}")

    def put_files(self, volume_id: int, archive: bytes) -> JSON:
        """Add or replace many files at once, as an uncompressed tar (ncloud.uploads.pack)."""
        return self._c.post_archive(f"/volumes/{volume_id}/files", archive)

    def put_file(self, volume_id: int, path: str, chunks: Iterator[bytes], size: int) -> JSON:
        """Add or replace the file at path (relative, '/'-separated) with size streamed bytes."""
        return self._c.put_file(_file_route(volume_id, path), chunks, size)

    def remove_file(self, volume_id: int, path: str) -> JSON:
        return self._c.request("DELETE", _file_route(volume_id, path))

    def download_file(self, volume_id: int, path: str, dest: Path) -> int:
        """One file into dest; returns the bytes written."""
        return self._c.stream_download(_file_route(volume_id, path), dest)

    def download(self, volume_id: int, dest: Path) -> JSON:
        """Every file of the volume under the folder dest; returns the volume as shown."""
        found = self.show(volume_id)
        for entry in found["file_list"]:
            self.download_file(volume_id, entry["path"], local_target(dest, entry["path"]))
        return found
