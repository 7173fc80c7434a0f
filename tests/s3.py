"""A real S3 endpoint for tests: moto in server mode on 127.0.0.1, and a proxy that can cut it.

The proxy forwards TCP to moto; `cut_after(n)` lets n more bytes through to clients and
then drops every connection and refuses new ones until `restore()`, which is how a test
makes S3 unreachable in the middle of an ingest.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """`moto_server` as a child process; stopped by its own handle."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        moto = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **CREDENTIALS},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/moto-api/", timeout=1)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start") from None
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("moto_server did not answer within 60s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 in front of an upstream port, with an off switch."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.budget: int | None = None  # bytes still allowed to clients; None: unlimited
        self.down = False
        self.closed = False
        self.delay_s = 0.0  # before each chunk passed on: a slow network
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, n_bytes: int) -> None:
        with self.lock:
            self.budget = n_bytes

    def cut(self) -> None:
        with self.lock:
            self.down, self.budget = True, None
            for s in self.open:
                _close(s)
            self.open.clear()

    def restore(self) -> None:
        with self.lock:
            self.down, self.budget, self.delay_s = False, None, 0.0

    def slow(self, delay_s: float) -> None:
        """Wait this long before passing on each chunk, both ways (until restore)."""
        self.delay_s = delay_s

    def stop(self) -> None:
        self.closed = True
        self.cut()
        _close(self.listener)

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            except OSError:
                _close(client)
                continue
            with self.lock:
                self.open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, to_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if to_client:
                    with self.lock:
                        if self.budget is not None:
                            self.budget -= len(data)
                            if self.budget < 0:
                                self.down, self.budget = True, None
                    if self.down:
                        self.cut()
                        return
                if self.delay_s:
                    time.sleep(self.delay_s)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
