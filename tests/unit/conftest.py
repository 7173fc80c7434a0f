"""Unit tests never start Ray: each gets its own NCLOUD_HOME and a fresh SQLite store."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.core import accounts, storage
from cluster.core.store import Store
from ncloud.client import Client
from ncloud.settings import settings
from tests.pg import PostgresServer


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("NCLOUD_HOME", str(home))
    monkeypatch.setenv("NCLOUD_RC", str(tmp_path / "ncloudrc"))
    for name in ("NCLOUD_HOST", "NCLOUD_TOKEN", "NCLOUD_TENANT", "NCLOUD_DB_URL", "NCLOUD_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    settings.cache_clear()
    yield home
    settings.cache_clear()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (tests/pg.py); each test its own database."""
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """The store on SQLite (the default) and on PostgreSQL (a cluster's): every test that
    touches the store runs on both."""
    from cluster.control import schema

    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        name = "t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
        monkeypatch.setenv("NCLOUD_DB_URL", server.database(name))
        settings.cache_clear()
    s = schema.open_store(settings().db_url)
    yield s
    s.dispose()


@pytest.fixture
def tenants(store: Store) -> Store:
    """The store with two tenants, vision and audio (one CPU each)."""
    accounts.create_tenant(store, "vision", 1, 0, 0)
    accounts.create_tenant(store, "audio", 1, 0, 0)
    return store


def volume_files(tenant: str) -> list[str]:
    """Every file on disk under the tenant's volumes, temporary ones included."""
    root = Path(storage.tenant_url(tenant, "volumes"))
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    """A folder of these files under root (names may hold subfolders)."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


LIMIT = 4096  # NCLOUD_MAX_FILE_BYTES for the in-process API


@pytest.fixture
def api(tenants: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Client]]:
    """The real FastAPI app (no Ray), its store the test's; returns a Client factory for
    ada (tenant vision) and bob (tenant audio)."""
    from fastapi.testclient import TestClient
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from serve import deps
    from serve.api import create_app

    monkeypatch.setenv("NCLOUD_MAX_FILE_BYTES", str(LIMIT))
    settings.cache_clear()
    deps.store.cache_clear()
    _, ada = accounts.create_user(tenants, "ada@example.com", ["vision"])
    _, bob = accounts.create_user(tenants, "bob@example.com", ["audio"])
    tokens = {"ada": ada, "bob": bob}
    # Mounted where Ray Serve puts it (route prefix /api/v1).
    app_ = Starlette(routes=[Mount("/api/v1", app=create_app())])

    def make(user: str | None = "ada", tenant: str | None = None) -> Client:
        c = Client("http://api.test", token=tokens[user] if user else None, tenant=tenant)
        c._http = TestClient(app_, base_url=c.base_url, headers=dict(c._http.headers))
        return c

    yield make
    deps.store().dispose()
    deps.store.cache_clear()
