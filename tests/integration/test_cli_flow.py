"""The CLI as a user runs it, in subprocesses against the real server."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.integration.conftest import Server


def test_admin_then_user_flow(server: Server, tmp_path: Path) -> None:
    made = json.loads(
        server.cli(
            "tenant", "add", "cli-team", "--cpus", "1", "--memory", "256MiB", "-o", "json"
        ).stdout
    )
    try:
        assert made["placement_group"].startswith("ncloud-tenant-cli-team")
        table = server.cli("tenant", "ls").stdout
        assert "cli-team" in table
        user = json.loads(
            server.cli(
                "user", "add", "grace@example.com", "--tenant", "cli-team", "-o", "json"
            ).stdout
        )
        token = user["token"]
        plain = server.cli("user", "add", "linus@example.com", "--tenant", "cli-team")
        assert plain.stdout.count("nc_") == 1 and "shown once" in plain.stderr

        rc = tmp_path / "rc"
        env_rc = {"NCLOUD_RC": str(rc)}
        server.env.update(env_rc)
        server.cli("configure", "--host", server.api_url, "--token", token, "--tenant", "cli-team")
        assert stat.S_IMODE(os.stat(rc).st_mode) == 0o600
        assert token in rc.read_text()

        info = json.loads(server.cli("info", "-o", "json", token=token).stdout)
        assert info["user"]["email"] == "grace@example.com" and info["tenant"] == "cli-team"
        resources = json.loads(server.cli("resource", "ls", "-o", "json", token=token).stdout)
        assert resources["reserved"]["cpus"] == 1 and resources["state"] == "CREATED"
        assert "RESERVED" in server.cli("resource", "ls", token=token).stdout

        created = json.loads(
            server.cli("token", "create", "--name", "ci", "-o", "json", token=token).stdout
        )
        listed = json.loads(server.cli("token", "ls", "-o", "json", token=token).stdout)
        assert {t["name"] for t in listed} == {"default", "ci"}
        server.cli("token", "revoke", created["id"], token=token)
        denied = server.cli("info", token=created["token"], check=False)
        assert denied.returncode == 1
        assert denied.stderr.strip().startswith("error: this token was revoked")
        assert "Traceback" not in denied.stderr

        forbidden = server.cli("tenant", "add", "nope", "--cpus", "1", token=token, check=False)
        assert forbidden.returncode == 1 and "admin" in forbidden.stderr
        bad = server.cli("tenant", "add", "bad/name", "--cpus", "1", check=False)
        assert bad.returncode == 1 and "1-64 characters" in bad.stderr
        usage = server.cli("tenant", "add", "x", "--cpus", "lots", check=False)
        assert usage.returncode == 2

        shown = json.loads(server.cli("user", "show", "grace@example.com", "-o", "json").stdout)
        assert shown["tenants"] == ["cli-team"]
        status = json.loads(server.cli("server", "status", "-o", "json").stdout)
        assert status["running"] is True and status["ray_env"]["RAY_AUTH_MODE"] == "token"
    finally:
        server.env.pop("NCLOUD_RC", None)
        for email in ("grace@example.com", "linus@example.com"):
            server.cli("user", "rm", email, "--yes", check=False)
        server.cli("tenant", "rm", "cli-team", "--yes", "--force", check=False)
    assert "cli-team" not in server.cli("tenant", "ls").stdout


def test_version_names_client_and_server_and_warns_when_they_differ(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ncloud
    from ncloud.cli.main import app

    same = server.cli("--host", server.api_url, "--version")
    assert f"ncloud client {ncloud.__version__}" in same.stdout
    assert f"ncloud server {ncloud.__version__} at {server.api_url}" in same.stdout
    assert "warning" not in same.stdout + same.stderr
    monkeypatch.setattr(ncloud, "__version__", "0.0.1")  # an older client than the server
    older = CliRunner().invoke(app, ["--host", server.api_url, "--version"])
    assert older.exit_code == 0, older.output
    assert "ncloud client 0.0.1" in older.output
    assert "warning: the client is 0.0.1 and the server" in older.output
