"""What `ncloud server start` makes sure of before it starts anything.

One start per NCLOUD_HOME at a time: two at once would start two Ray heads on the same ports
and, sharing the home's control-plane id, the one that failed would give back the lease the
other holds. And ports that are free and outside the range Ray hands its own workers, so a
clash is one line naming the port instead of Ray's traceback from inside its start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ncloud.errors import Conflict, InvalidInput

RAY_WORKER_PORTS = range(10002, 20000)  # `ray start`'s default --min/--max-worker-port


@contextlib.contextmanager
def start_lock(home: Path) -> Iterator[None]:
    """Held for the whole start; the kernel lets go of it when the process ends, however."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / "start.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise Conflict(
                f"another `ncloud server start` for {home} is running (pid {holder}): wait "
                "for it to finish, then `ncloud server status`"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def check_ports(ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Each `--flag port` is a port we may take: InvalidInput or Conflict naming it."""
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise InvalidInput(f"{flag} {port} is not a port (1-65535)")
        if port in RAY_WORKER_PORTS:
            raise InvalidInput(
                f"{flag} {port} is inside the ports Ray gives its workers "
                f"({RAY_WORKER_PORTS.start}-{RAY_WORKER_PORTS.stop - 1}): pick one outside"
            )
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                raise Conflict(
                    f"{flag} {port} is in use on {host} (another server?): pick another"
                ) from None
