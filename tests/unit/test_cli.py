"""The CLI: exit codes, JSON on stdout, one readable error line, no Ray on the --help path."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

from ncloud.cli import common
from ncloud.cli.main import app, main
from ncloud.client import Client

runner = CliRunner()


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> list[httpx.Request]:
    """Route the CLI's client through a MockTransport that answers like the API."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/tenants") and request.method == "GET":
            return httpx.Response(
                200,
                json=[
                    {
                        "name": "vision",
                        "cpus": 2.0,
                        "gpus": 0.0,
                        "memory": 0,
                        "placement_group": "pg",
                        "created_at": "now",
                    }
                ],
            )
        if request.url.path.endswith("/users") and request.method == "POST":
            return httpx.Response(
                201,
                json={
                    "email": "ada@example.com",
                    "admin": False,
                    "tenants": ["vision"],
                    "created_at": "now",
                    "token": "nc_id_secret",
                },
            )
        return httpx.Response(
            409,
            json={
                "code": "quota_exceeded",
                "message": "cluster has 2 CPUs unreserved; tenant asks for 4",
            },
        )

    monkeypatch.setattr(
        common,
        "client",
        lambda: Client("http://api.test", token="t", transport=httpx.MockTransport(handler)),
    )
    return seen


def test_json_output_is_parseable(fake_api: list[httpx.Request]) -> None:
    result = runner.invoke(app, ["tenant", "ls", "-o", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)[0]["name"] == "vision"


def test_user_add_prints_the_token_once(fake_api: list[httpx.Request]) -> None:
    result = runner.invoke(app, ["user", "add", "ada@example.com", "--tenant", "vision"])
    assert result.exit_code == 0
    assert result.stdout.count("nc_id_secret") == 1
    assert json.loads(fake_api[0].content) == {
        "email": "ada@example.com",
        "tenants": ["vision"],
        "admin": False,
    }


def test_domain_error_is_one_line_exit_1(
    fake_api: list[httpx.Request],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "argv", ["ncloud", "tenant", "add", "big", "--cpus", "4"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: cluster has 2 CPUs unreserved; tenant asks for 4"


def test_bad_usage_exits_2() -> None:
    result = runner.invoke(app, ["tenant", "add", "x", "--cpus", "many"])
    assert result.exit_code == 2


def test_rm_without_yes_when_not_interactive_is_refused(fake_api: list[httpx.Request]) -> None:
    result = runner.invoke(app, ["tenant", "rm", "vision"])
    assert result.exit_code != 0 and fake_api == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_not_running_prints_how_to_start_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{_closed_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "ncloud.cli.main", "--host", url, "--token", "t", "info"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NCLOUD_HOME": str(tmp_path)},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: cannot reach ncloud at {url}: is it running? (ncloud server start)"
    )
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_path_does_not_import_ray() -> None:
    code = "import sys, ncloud.cli.main; print('ray' in sys.modules, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "False"]


def test_follow_stops_or_hands_back_what_it_saw_last() -> None:
    from ncloud.cli.common import follow
    from ncloud.errors import NcloudError

    seen = iter([{"status": "Ingesting"}, {"status": "Ready"}])
    ready = follow(lambda: next(seen), lambda f: f["status"] == "Ready", str, 60, "x", "y")
    assert ready == {"status": "Ready"}
    waiting = {"status": "Deploying"}
    with pytest.raises(NcloudError, match="model 3 still Deploying after 0s; see `ncloud show`"):
        follow(lambda: waiting, lambda f: False, str, 0, "model 3", "ncloud show")
    assert follow(lambda: waiting, lambda f: False, str, 0, "m", "h", give_up=False) is waiting


@pytest.mark.parametrize(
    ("alias", "group"),
    [("m", "model"), ("ds", "dataset"), ("d", "dataset"), ("v", "volume"), ("vs", "volume"),
     ("b", "batch"), ("r", "resource")],
)  # fmt: skip
def test_nervanas_short_names_are_the_groups(alias: str, group: str) -> None:
    import typer

    short = runner.invoke(app, [alias, "--help"])
    assert short.exit_code == 0 and f" {alias} [OPTIONS] COMMAND" in short.output
    groups = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert set(groups[alias].commands) == set(groups[group].commands) != set()


def test_model_is_the_default_group_and_an_unknown_name_still_exits_2() -> None:
    train = runner.invoke(app, ["train", "--help"])
    assert train.exit_code == 0 and "Queue a training run" in train.output
    assert runner.invoke(app, ["results", "--help"]).output.count("--filter") == 1
    assert runner.invoke(app, ["info", "--help"]).output.count("Who you are") == 1  # top wins
    unknown = runner.invoke(app, ["trian"])
    assert unknown.exit_code == 2 and "No such command" in unknown.output
    listed = runner.invoke(app, ["--help"]).output
    assert " m " not in listed and " ds " not in listed  # the short names stay out of --help


def test_version_with_no_server_says_so_and_exits_0(isolated_home: object) -> None:
    import ncloud

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(app, ["--host", f"127.0.0.1:{port}", "--version"])
    assert result.exit_code == 0, result.output
    assert f"ncloud client {ncloud.__version__}" in result.output
    assert "ncloud server: unknown (cannot reach ncloud" in result.output


def test_shell_completion_is_offered() -> None:
    listed = runner.invoke(app, ["--help"]).output
    assert "--install-completion" in listed
    script = runner.invoke(app, ["--show-completion", "bash"])
    assert script.exit_code == 0 and "complete" in script.output
