"""Unit tests never start Ray: each gets its own NCLOUD_HOME and a fresh SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ncloud.settings import settings


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


@pytest.fixture
def store(isolated_home: Path):  # type: ignore[no-untyped-def]
    from cluster.control import schema

    s = schema.open_store(settings().db_url)
    yield s
    s.dispose()
