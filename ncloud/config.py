"""~/.ncloudrc: where the CLI finds its host, token and tenant (flags and NCLOUD_* win over it)."""

from __future__ import annotations

import configparser
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from ncloud.protocol import API_PREFIX
from ncloud.settings import settings

DEFAULT_HOST = "http://127.0.0.1:8000"
SECTION = "ncloud"


@dataclass(frozen=True)
class Config:
    host: str
    token: str | None
    tenant: str | None


def api_url(host: str) -> str:
    """The API base URL for a host as users write it (with or without the API prefix)."""
    host = host.strip().rstrip("/")
    if "://" not in host:
        host = f"http://{host}"
    return host if host.endswith(API_PREFIX) else f"{host}{API_PREFIX}"


def check_host(host: str) -> str:
    """A host as users write it, refused (exit 2) unless it reads as an http(s) URL."""
    from urllib.parse import urlsplit

    from ncloud.errors import UsageError

    raw = host.strip()
    url = raw if "://" in raw else f"http://{raw}"
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number in range
    except ValueError as exc:
        raise UsageError(f"--host {host!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in host.strip():
        raise UsageError(f"--host {host!r} is not a URL such as http://127.0.0.1:8000")
    if parts.query or parts.fragment or (port is not None and port == 0):
        raise UsageError(f"--host {host!r} is not a URL such as http://127.0.0.1:8000")
    return api_url(raw)


def read_rc(path: Path | None = None) -> dict[str, str]:
    path = path or settings().rc_path
    if not path.exists():
        return {}
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(
            f"warning: {path} is readable by other users; it holds your token: chmod 600 {path}",
            file=sys.stderr,
        )
    parser = configparser.ConfigParser()
    parser.read(path)
    return dict(parser[SECTION]) if parser.has_section(SECTION) else {}


def load(host: str | None = None, token: str | None = None, tenant: str | None = None) -> Config:
    """Flags first, then NCLOUD_* variables, then ~/.ncloudrc, then the local default."""
    s, rc = settings(), read_rc()
    return Config(
        host=api_url(host or s.host or rc.get("host") or DEFAULT_HOST),
        token=token or s.token or rc.get("token") or None,
        tenant=tenant or s.tenant or rc.get("tenant") or None,
    )


def write_rc(host: str, token: str, tenant: str | None, path: Path | None = None) -> Path:
    """Write the config file with mode 0600 from the first byte (never briefly world-readable)."""
    path = path or settings().rc_path
    parser = configparser.ConfigParser()
    parser[SECTION] = {"host": host, "token": token}
    if tenant:
        parser[SECTION]["tenant"] = tenant
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        parser.write(handle)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
