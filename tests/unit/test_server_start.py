"""`ncloud server start` that cannot reach its Ray cluster fails fast and creates no admin
whose token nobody saw; `ncloud server admin-token --reset` mints one from the store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import boto3
import fsspec
import pytest

from cluster.control import schema, startup
from cluster.control.attach import check_reachable
from cluster.core import storage, tokens
from cluster.core.store import Store
from ncloud.errors import InvalidInput, ServerUnreachable
from ncloud.settings import settings
from tests.s3 import CREDENTIALS, MotoServer, free_port


def _ncloud(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ncloud.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ),
    )  # fmt: skip


def _admins(url: str) -> int:
    from sqlalchemy import func, select

    from cluster.core.accounts import users

    store = schema.open_store(url)
    try:
        with store.read() as conn:
            return int(conn.execute(select(func.count()).where(users.c.is_admin)).scalar() or 0)
    finally:
        store.dispose()


def test_nothing_listening_is_said_at_once_naming_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachable, match=f"no Ray cluster answers at {address}"):
        check_reachable(address)
    with pytest.raises(InvalidInput, match="HOST:PORT"):
        check_reachable("just-a-host")


def test_a_start_that_cannot_attach_fails_in_one_line_and_makes_no_admin() -> None:
    address = f"127.0.0.1:{free_port()}"
    out = _ncloud("server", "start", "--single-tenant", "--address", address)
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert address in last and "Traceback" not in out.stderr, out.stderr
    assert _admins(settings().db_url) == 0  # the next start shows the first token


def test_a_second_start_of_the_same_home_while_one_runs_is_refused_naming_it() -> None:
    with startup.start_lock(settings().home):  # as a start still under way holds it
        out = _ncloud("server", "start", "--single-tenant", "--port", str(free_port()))
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert (
        f"another `ncloud server start` for {settings().home} is running (pid {os.getpid()})"
        in last
    )
    assert "Traceback" not in out.stderr and not (settings().home / "server.json").exists()
    with startup.start_lock(settings().home):  # given back when its holder is done
        pass


@pytest.mark.parametrize(
    ("flag", "taken", "said"),
    [
        ("--port", True, "--port {port} is in use on 127.0.0.1"),
        ("--ray-port", True, "--ray-port {port} is in use on 127.0.0.1"),
        ("--dashboard-port", False, "--dashboard-port {port} is inside the ports Ray gives"),
    ],
)
def test_a_port_that_is_taken_or_rays_own_is_one_line_before_anything_starts(
    flag: str, taken: bool, said: str
) -> None:
    with socket.socket() as holder:
        if taken:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = int(holder.getsockname()[1])
            while port in startup.RAY_WORKER_PORTS:  # an ephemeral port can land in there
                holder.close()
                holder = socket.socket()
                holder.bind(("127.0.0.1", 0))
                holder.listen()
                port = int(holder.getsockname()[1])
        else:
            port = 16379
        others = {"--port": free_port(), "--ray-port": free_port(), "--dashboard-port": free_port()}
        others[flag] = port
        args = [arg for pair in others.items() for arg in (pair[0], str(pair[1]))]
        out = _ncloud("server", "start", "--single-tenant", *args)
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert said.format(port=port) in last and "Traceback" not in out.stderr, out.stderr
    assert not (settings().home / "server.json").exists()


def test_admin_token_reset_mints_a_token_that_authenticates(store: Store) -> None:
    bare = _ncloud("server", "admin-token")
    assert bare.returncode != 0 and "--reset" in bare.stderr
    first = _ncloud("server", "admin-token", "--reset", "-o", "json")
    assert first.returncode == 0, first.stderr
    again = _ncloud("server", "admin-token", "--reset", "-o", "json")
    tokens_made = [json.loads(p.stdout)["admin_token"] for p in (first, again)]
    assert tokens_made[0] != tokens_made[1]
    for token in tokens_made:  # both work: a reset adds a token, it revokes none
        user = tokens.authenticate(store, token)
        assert user.is_admin and user.email == "admin@ncloud.local"
    assert _admins(store.url) == 1


def test_a_bucket_that_does_not_exist_fails_start_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moto = MotoServer()
    try:
        for key, value in {**CREDENTIALS, "NCLOUD_S3_ENDPOINT_URL": moto.url}.items():
            monkeypatch.setenv(key, value)
        settings.cache_clear()
        monkeypatch.setitem(fsspec.config.conf, "s3", {})  # this test's endpoint, undone after
        storage.configure_fsspec()
        s3 = boto3.client("s3", endpoint_url=moto.url, **_boto_credentials())
        s3.create_bucket(Bucket="there")
        storage.check_writable("s3://there/ncloud")  # an existing bucket: fine
        monkeypatch.setenv("NCLOUD_STORAGE", "s3://no-such-bucket/ncloud")
        out = _ncloud("server", "start", "--single-tenant")
        assert out.returncode == 1, out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert "NCLOUD_STORAGE=s3://no-such-bucket/ncloud" in last, out.stderr
        assert "Traceback" not in out.stderr
    finally:
        moto.stop()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }
