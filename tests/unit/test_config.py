"""~/.ncloudrc: written 0600, a warning when others can read it, flags over env over file;
and a limit in the environment that would lift itself is refused."""

from __future__ import annotations

import os
import stat

import pytest

from ncloud import config
from ncloud.settings import settings


def test_written_with_mode_0600() -> None:
    path = config.write_rc("http://h:1", "nc_a_b", "vision")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.read_rc() == {"host": "http://h:1", "token": "nc_a_b", "tenant": "vision"}


def test_readable_by_others_warns(capsys: pytest.CaptureFixture[str]) -> None:
    path = config.write_rc("http://h:1", "nc_a_b", None)
    os.chmod(path, 0o644)
    config.read_rc()
    assert "readable by other users" in capsys.readouterr().err


def test_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    config.write_rc("http://file:1", "file-token", "file-tenant")
    assert config.load() == config.Config("http://file:1/api/v1", "file-token", "file-tenant")
    monkeypatch.setenv("NCLOUD_TENANT", "env-tenant")
    monkeypatch.setenv("NCLOUD_HOST", "env:2")
    settings.cache_clear()
    cfg = config.load(token="flag-token")
    assert cfg == config.Config("http://env:2/api/v1", "flag-token", "env-tenant")


def test_default_host_without_a_file() -> None:
    assert config.load().host == "http://127.0.0.1:8000/api/v1"


@pytest.mark.parametrize("raw", ["0", "-5"])
def test_a_check_cpu_limit_that_would_lift_the_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("NCLOUD_CHECK_CPU_SECONDS", raw)
    settings.cache_clear()
    with pytest.raises(ValueError, match=r"NCLOUD_CHECK_CPU_SECONDS=.* must be at least 1"):
        settings()
    monkeypatch.setenv("NCLOUD_CHECK_CPU_SECONDS", "7")
    settings.cache_clear()
    assert settings().check_cpu_s == 7
