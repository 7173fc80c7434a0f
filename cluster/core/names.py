"""What every Ray process of the control plane agrees on: the namespace, actor names, settings."""

from __future__ import annotations

import os

from ncloud.settings import settings

NAMESPACE = "ncloud"
CONTROLLER = "ncloud-controller"
# The control plane (the controller, the API's replicas) lives on the head node: it holds
# no CPUs, and a worker node's loss must not take it down. Ray gives the head this resource.
ON_HEAD = {"node:__internal_head__": 0.001}


def on_head(env: dict[str, str]) -> dict[str, object]:
    """Ray actor options of a control-plane Serve app's replicas (the API, the dashboard, the
    fallback for models not deployed): no CPUs of any tenant, on the head, with these
    NCLOUD_* settings."""
    return {"num_cpus": 0, "resources": ON_HEAD, "runtime_env": {"env_vars": env}}


def control_plane_env() -> dict[str, str]:
    """The NCLOUD_* settings the controller and API replicas need, made explicit."""
    s = settings()
    env = {
        "NCLOUD_HOME": str(s.home),
        "NCLOUD_DB_URL": s.db_url,
        "NCLOUD_STORAGE": s.storage,
        "NCLOUD_MAX_BODY_BYTES": str(s.max_body_bytes),
        "NCLOUD_MAX_FILE_BYTES": str(s.max_file_bytes),
    }
    for key, value in os.environ.items():
        # The shard cache is the node's own: each node's raylet environment names it.
        if key.startswith(("NCLOUD_", "AWS_")) and key not in env and key != "NCLOUD_CACHE_DIR":
            env[key] = value
    return env
