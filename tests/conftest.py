"""The whole session: one Ray auth token, in the environment before anything is collected.

Ray's client reads and caches its auth token (in C++, once per process) the first time an
import such as `ray.serve` asks for it. A test module that imports the API at collection
would cache "no token" long before the integration server exists, and every later Ray
state call of the session would be refused. So the token exists first; the integration
server is started with this same token (tests/integration/conftest.py copies it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

TOKEN_DIR_KEY = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ncloud-ray-token-"))
    path = folder / "ray-auth-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    config.stash[TOKEN_DIR_KEY] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(TOKEN_DIR_KEY, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
