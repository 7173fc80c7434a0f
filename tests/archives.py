"""Tar archives as a hostile or an ordinary client would send them to a files route."""

from __future__ import annotations

import io
import tarfile


def tar_of(members: list[tuple[str, bytes | str]]) -> bytes:
    """A tar of (name, bytes) files and (name, "->target") symlinks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data.removeprefix("->")
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
