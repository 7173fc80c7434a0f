"""A real PostgreSQL server for tests: Debian's `postgres`, on 127.0.0.1, in a folder of the
test session's, stopped by its own handle.

The server runs as the `postgres` user when the tests run as root (it refuses root), and
asks for a password over TCP (scram-sha-256), so a wrong password fails the way it would on
a cluster. `database()` makes a fresh, empty database per caller.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.s3 import free_port

USER = "ncloud"
PASSWORD = "ncloud-test-password"


def server_bin() -> Path | None:
    """The folder of `postgres` and `initdb`: pg_config's, else Debian's newest."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if (bindir / "postgres").is_file():
            return bindir
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version)
    return Path(versions[-1]).parent if versions else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


class PostgresServer:
    def __init__(self) -> None:
        bindir = server_bin()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server here: apt-get install postgresql")
        # its own folder right under /tmp: the postgres user cannot enter pytest's (0700)
        root = self.root = Path(tempfile.mkdtemp(prefix="ncloud-pg-"))
        self.data = root / "data"
        self.port = free_port()
        self.host = "127.0.0.1"
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # postgres will not run as root
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        pwfile = root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        made = subprocess.run(
            [str(bindir / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
            capture_output=True, text=True, cwd=root, check=False, **self._as,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr.strip()[-500:]}")
        self.bindir = bindir
        self.log = open(root / "postgres.log", "ab")  # noqa: SIM115
        self.resume()

    def resume(self) -> None:
        """Start the server (again, after `pause`) on the same data and port."""
        root = self.root
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data), "-h", self.host,
             "-p", str(self.port), "-k", str(root), "-c", "fsync=off",
             "-c", "max_connections=200"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=root, **self._as,
        )  # fmt: skip
        self._wait_ready(self.bindir)

    def pause(self) -> None:
        """Stop the server, keeping its data: the database "goes away"."""
        self.proc.send_signal(signal.SIGINT)  # postgres's "fast" shutdown
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def _wait_ready(self, bindir: Path) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start: see {self.root}/postgres.log")
            ready = subprocess.run(
                [str(bindir / "pg_isready"), "-h", self.host, "-p", str(self.port)],
                capture_output=True, check=False,
            )  # fmt: skip
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("postgres did not accept connections within 60 s")

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://{USER}:{password}@{self.host}:{self.port}/{database}"

    def database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        dsn = f"host={self.host} port={self.port} user={USER} password={PASSWORD} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.pause()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
