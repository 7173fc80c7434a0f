"""A PostgreSQL store that refuses us or goes away: a 503 that names it (password hidden),
nothing half-written, and the same store working again once it is back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cluster.control import schema
from cluster.core import accounts
from ncloud.errors import Unavailable
from tests.pg import PASSWORD, PostgresServer
from tests.s3 import free_port


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: it is stopped and started again mid-test."""
    server = PostgresServer()
    yield server
    server.stop()


def test_a_wrong_password_is_a_clear_error_and_creates_nothing(postgres: PostgresServer) -> None:
    url = postgres.database("t_wrong_password")
    wrong = url.replace(f":{PASSWORD}@", ":not-the-password@")
    with pytest.raises(Unavailable, match="password authentication failed") as refused:
        schema.open_store(wrong)
    assert "not-the-password" not in refused.value.message and "***" in refused.value.message
    store = schema.open_store(url)  # the right password: an empty database, now created
    try:
        assert accounts.list_tenants(store) == []
    finally:
        store.dispose()


def test_an_unreachable_host_is_a_clear_error_at_start() -> None:
    url = f"postgresql+psycopg://ncloud:pw@127.0.0.1:{free_port()}/ncloud"
    env = {**os.environ, "NCLOUD_DB_URL": url}
    out = subprocess.run(
        [sys.executable, "-m", "ncloud.cli.main", "server", "start", "--single-tenant"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "the store at postgresql+psycopg://ncloud:***@127.0.0.1" in last, out.stderr
    assert "Traceback" not in out.stderr


def test_the_store_going_away_is_a_503_and_it_recovers(own_postgres: PostgresServer) -> None:
    store = schema.open_store(own_postgres.database("t_goes_away"))
    try:
        accounts.create_tenant(store, "vision", 1, 0, 3 << 30)  # and 3 GiB fits
        own_postgres.pause()
        with pytest.raises(Unavailable) as down:
            accounts.create_tenant(store, "audio", 1, 0, 0)
        assert down.value.http_status == 503
        with pytest.raises(Unavailable):
            accounts.list_tenants(store)
        own_postgres.resume()
        assert [t.name for t in accounts.list_tenants(store)] == ["vision"]  # none half-made
        accounts.create_tenant(store, "audio", 1, 0, 0)
        assert {t.name for t in accounts.list_tenants(store)} == {"vision", "audio"}
    finally:
        store.dispose()
