"""The end-to-end demo on the embedded local cluster: `make demo`.

It runs the same `ncloud` commands a user would type, printing each one, against a
server of its own (NCLOUD_HOME=.demo/, free ports on 127.0.0.1), and stops that server
at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from examples.digits import make_digits

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Shell:
    def __init__(self, home: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NCLOUD_")}
        self.env.update({"NCLOUD_HOME": str(home), "NCLOUD_RC": str(home / "ncloudrc")})

    def run(self, *args: str, show: bool = True, quiet: bool = False) -> str:
        if not quiet:
            print(f"\n$ ncloud {shlex.join(args)}", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "ncloud.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if show:
            print(proc.stdout, end="")
        print(proc.stderr, end="", file=sys.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"demo failed: `ncloud {shlex.join(args)}` exited {proc.returncode}")
        return proc.stdout

    def json(self, *args: str, quiet: bool = False) -> Any:
        return json.loads(self.run(*args, "-o", "json", show=False, quiet=quiet))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", default=str(ROOT / ".demo"), help="NCLOUD_HOME for the demo")
    parser.add_argument("--keep", action="store_true", help="leave the server running")
    args = parser.parse_args()
    home = Path(args.home)
    sh = Shell(home)
    if (home / "server.json").exists():
        sh.run("server", "stop")
    port = _free_port()
    started = sh.json(
        "server",
        "start",
        "--cpus",
        "2",
        "--port",
        str(port),
        "--ray-port",
        str(_free_port()),
        "--dashboard-port",
        str(_free_port()),
    )
    api = started["api_url"].removesuffix("/api/v1")
    admin = started["admin_token"] or (home / "admin-token").read_text().strip()
    (home / "admin-token").write_text(admin)
    os.chmod(home / "admin-token", 0o600)
    print(f"server up at {api} (Ray dashboard {started['dashboard_url']})")
    try:
        sh.env.update({"NCLOUD_HOST": api, "NCLOUD_TOKEN": admin})
        if "vision" in {t["name"] for t in sh.json("tenant", "ls")}:
            sh.run("tenant", "rm", "vision", "--force", "--yes")
        sh.run("tenant", "add", "vision", "--cpus", "2", "--gpus", "0", "--memory", "1GiB")
        users = {u["email"] for u in sh.json("user", "ls")}
        if "ada@example.com" in users:
            sh.run("user", "rm", "ada@example.com", "--yes")
        ada = sh.json("user", "add", "ada@example.com", "--tenant", "vision")
        print(f"ada's token (shown once): {ada['token'][:12]}...")
        del sh.env["NCLOUD_TOKEN"], sh.env["NCLOUD_HOST"]
        sh.run("configure", "--host", api, "--token", ada["token"], "--tenant", "vision")
        sh.run("info")
        sh.run("resource", "ls")
        sh.run("token", "ls")

        data = home / "digits"
        if not (data / "train.tsv").exists():
            print(f"\nmaking the example dataset in {data} (scikit-learn's digits as PNGs)")
            make_digits(data)
        train = sh.json("dataset", "upload", str(data / "train.tsv"), "--name", "digits-train")
        valid = sh.json("dataset", "upload", str(data / "valid.tsv"), "--name", "digits-valid")
        sh.run("dataset", "show", str(train["id"]))
        sh.run("dataset", "ls")

        print("\ntraining the example CNN (examples/cnn.yaml) on the digits, following it live")
        sh.run(
            "model",
            "train",
            str(ROOT / "examples" / "cnn.yaml"),
            "--dataset",
            f"train:{train['id']},valid:{valid['id']}",
            "-e",
            "8",
            "-n",
            "digits-cnn",
            "-L",
        )
        model = next(m for m in sh.json("model", "ls") if m["name"] == "digits-cnn")
        model_id = str(model["id"])
        sh.run("model", "show", model_id)

        print("\ndeploying it on Ray Serve and asking it about held-out images")
        sh.run("model", "deploy", model_id)
        holdout = sorted((data / "holdout").glob("*.png"))
        sh.run("model", "predict", model_id, *map(str, holdout[:3]))
        found = sh.json("model", "predict", model_id, *map(str, holdout), "-k", "1")
        truth = dict(
            line.split("\t") for line in (data / "holdout.tsv").read_text().splitlines()[1:]
        )
        right = sum(
            p["top"][0]["label"] == truth[f"holdout/{p['input']}"] for p in found["predictions"]
        )
        print(
            f"\nheld-out accuracy: {right}/{len(holdout)} = {right / len(holdout):.0%} "
            "(images the model never saw in training or validation)"
        )
        print("\nwhat it used: the hours its run and its deployment held of the reservation")
        sh.run("usage")
        print(f"\nthe dashboard: {api}/ui (sign in with ada's token)")
        sh.run("server", "status")
        print("\nrestarting the server: every record and reservation comes back")
        sh.run("server", "stop")
        sh.run(
            "server",
            "start",
            "--cpus",
            "2",
            "--port",
            str(port),
            "--ray-port",
            str(_free_port()),
            "--dashboard-port",
            str(_free_port()),
        )
        sh.run("resource", "ls")
        sh.run("dataset", "ls")
        sh.run("model", "ls")
        print("\nthe deployment comes back with the server: predicting again")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            mine = next(m for m in sh.json("model", "ls", quiet=True) if m["id"] == model["id"])
            if mine["deployment"] in ("Deployed", "Failed"):
                break
            time.sleep(2)
        sh.run("model", "predict", model_id, str(holdout[0]), "-k", "3")
        print("\ndemo complete.")
    finally:
        if not args.keep:
            sh.run("server", "stop")
        else:
            print(f"server left running: NCLOUD_HOME={home} ncloud server stop")


if __name__ == "__main__":
    main()
