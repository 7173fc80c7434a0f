"""Ray nodes on this machine for the multi-node tests: a head started the way a team
starts one (`ray start --head`), and worker nodes that join it, each in its own session
with its own temp dir and node cache and a resource named after it; `kill` takes one away
the way a lost machine goes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from cluster.control.local import free_ports
from tests.integration.conftest import wait_for

RAY = str(Path(sys.executable).parent / "ray")
GRACE_S = 3.0  # after SIGTERM, before SIGKILL of the node's whole session


class RayNode:
    """`ray start --address ... --block` (or `--head`) with its own temp dir and cache."""

    def __init__(
        self,
        folder: Path,
        label: str,
        env: dict[str, str],
        address: str = "",
        dashboard_url: str = "",
        cpus: int = 1,
    ) -> None:
        self.label = label
        self.cache = folder / f"{label}-cache"
        # Ray's socket paths must stay under 108 bytes: a short temp dir of the node's own.
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"nc{label}-", dir="/tmp"))
        self.log_path = folder / f"{label}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        args = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                "--resources", json.dumps({label: 1}), f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats"]  # fmt: skip
        if address:
            self.address, self.dashboard_url = address, dashboard_url
            args.append(f"--address={address}")
        else:  # a head: every port its own, on loopback
            port, dash, client, agent, grpc, runtime, metrics = free_ports(7, set())
            self.address = f"127.0.0.1:{port}"
            self.dashboard_url = f"http://127.0.0.1:{dash}"
            args += ["--head", f"--port={port}", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                     f"--dashboard-agent-listen-port={agent}",
                     f"--dashboard-agent-grpc-port={grpc}",
                     f"--runtime-env-agent-port={runtime}",
                     f"--metrics-export-port={metrics}"]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**env, "NCLOUD_CACHE_DIR": str(self.cache)},
            start_new_session=True,
        )
        try:
            wait_for(lambda: self._find() is not None, 120, f"{label} to join")
        except AssertionError as exc:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            self.stop()
            raise AssertionError(f"{exc}; its log ends:\n{tail}") from None
        self.node_id = str(self._find())

    def _find(self) -> str | None:
        return node_id(self.dashboard_url, self.label)

    def kill(self) -> None:
        """SIGKILL every process of the node (its raylet with them): no goodbye to Ray."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        """Ask the node to stop (SIGTERM to its session); stop() waits for it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:  # `ray start --block` takes 30 s to end on SIGTERM; nothing here needs it
                self.proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):  # what the node left in its session
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def node_id(dashboard_url: str, label: str) -> str | None:
    """The id of the live node that has the resource `label`, if any."""
    from ray.util.state import list_nodes

    with contextlib.suppress(Exception):  # the dashboard is not up yet
        for node in list_nodes(address=dashboard_url):
            if node.state == "ALIVE" and label in (node.resources_total or {}):
                return str(node.node_id)
    return None
