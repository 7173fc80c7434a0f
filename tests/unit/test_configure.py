"""`ncloud configure` changes only what it is given, refuses a malformed host with exit 2,
and saves an unreachable one with a warning (exit 0)."""

from __future__ import annotations

import configparser
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ncloud.cli.main import app

runner = CliRunner()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rc(isolated_home: Path) -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(isolated_home.parent / "ncloudrc")
    return dict(parser["ncloud"])


def test_each_run_keeps_the_fields_the_other_set(isolated_home: Path) -> None:
    host = f"http://127.0.0.1:{_closed_port()}"
    first = runner.invoke(app, ["configure", "--host", host, "--token", "nc_a_one"])
    assert first.exit_code == 0, first.output
    assert "warning" in first.output and "cannot reach" in first.output
    second = runner.invoke(app, ["configure", "--token", "nc_b_two", "--tenant", "vision"])
    assert second.exit_code == 0, second.output
    assert _rc(isolated_home) == {"host": host, "token": "nc_b_two", "tenant": "vision"}
    third = runner.invoke(app, ["configure", "--tenant", "nlp"])
    assert third.exit_code == 0, third.output
    assert _rc(isolated_home) == {"host": host, "token": "nc_b_two", "tenant": "nlp"}
    fourth = runner.invoke(app, ["configure", "--host", "127.0.0.1:9"])
    assert fourth.exit_code == 0, fourth.output
    assert _rc(isolated_home) == {
        "host": "http://127.0.0.1:9",
        "token": "nc_b_two",
        "tenant": "nlp",
    }


@pytest.mark.parametrize(
    "host",
    ["ftp://example.com", "http://", "http://127.0.0.1:99999", "http://a b", "http://h:port", "?x"],
)
def test_a_malformed_host_exits_2_and_writes_nothing(isolated_home: Path, host: str) -> None:
    ok = runner.invoke(app, ["configure", "--host", "http://127.0.0.1:9", "--token", "nc_a_b"])
    assert ok.exit_code == 0, ok.output
    result = runner.invoke(app, ["configure", "--host", host, "--token", "nc_c_d"])
    assert result.exit_code == 2, result.output
    assert _rc(isolated_home) == {"host": "http://127.0.0.1:9", "token": "nc_a_b"}


def test_no_token_saved_and_none_given_is_refused(isolated_home: Path) -> None:
    result = runner.invoke(app, ["configure", "--host", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "--token is required" in result.output
    assert not (isolated_home.parent / "ncloudrc").exists()
