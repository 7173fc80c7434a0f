"""The README's first steps run as written, line by line, against the suite's server (a
transcript test): a README step that breaks fails the suite."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

from ncloud.errors import NcloudError
from tests.integration.conftest import Server
from tests.integration.lab import ROOT

MARK = "<!-- transcript -->"
README_HOST = "http://127.0.0.1:8000"


def transcript() -> list[str]:
    """The commands of the fenced block after the README's transcript mark, comments cut."""
    text = (ROOT / "README.md").read_text()
    assert text.count(MARK) == 1, "the README marks one block as its transcript"
    block = text.split(MARK, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def _ids(server: Server, token: str, tenant: str) -> dict[str, str]:
    """<name> -> id of the tenant's datasets and models, as the README's placeholders."""
    client = server.client(token=token, tenant=tenant)
    found = {f"<{d['name']}>": str(d["id"]) for d in client.datasets.list()}
    found.update({f"<{m['name']}>": str(m["id"]) for m in client.models.list()})
    return found


def test_the_readmes_first_steps_run_as_written(server: Server, tmp_path: Path) -> None:
    lines = transcript()
    # The suite's server was started by the fixture with this command (and free ports);
    # here the step checks it runs, and the rest go to it as a new user's would.
    assert lines[:2] == ["source .venv/bin/activate", "ncloud server start"]
    env = {k: v for k, v in server.env.items() if k not in ("NCLOUD_TOKEN", "NCLOUD_TENANT")}
    env.pop("NCLOUD_HOST", None)  # configure's host, from the README, must be what is used
    env["NCLOUD_RC"] = str(tmp_path / "ncloudrc")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    values = {"<admin token>": server.admin_token}
    steps = [("ncloud server status", "ncloud server status"), *((x, x) for x in lines[2:])]
    said: dict[str, str] = {}
    try:
        for line, command in steps:
            command = command.replace(README_HOST, server.api_url)
            for placeholder, value in values.items():
                command = command.replace(placeholder, value)
            assert not re.search(r"<[^>]+>", command), f"an unknown placeholder in: {line}"
            proc = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, (
                f"README step `{line}` exited {proc.returncode}:\n" + (proc.stderr[-3000:])
            )
            assert "Traceback" not in proc.stderr, line
            said[line] = proc.stdout + proc.stderr
            if " user add " in command:
                values["<ada's token>"] = re.findall(r"nc_\S+", proc.stdout)[0]
            if "<ada's token>" in values:
                values.update(_ids(server, values["<ada's token>"], "vision"))
        predicted = next(out for line, out in said.items() if " predict " in line)
        assert predicted.lower().count("probability") == 1 and "0000.png" in predicted
        assert "Completed after 3 epoch(s)" in next(o for x, o in said.items() if " train " in x)
        assert "vision" in (tmp_path / "ncloudrc").read_text()
        assert server.api_url in (tmp_path / "ncloudrc").read_text()  # kept by the 2nd configure
    finally:
        with contextlib.suppress(NcloudError):
            server.client().users.remove("ada@example.com")
        with contextlib.suppress(NcloudError):
            server.client().tenants.remove("vision", force=True)
