"""Attaching to a Ray cluster that is already running (`ncloud server start --address`):
fail within seconds, in one line that names the address or the setting to fix."""

from __future__ import annotations

import socket
from typing import Any

from ncloud.errors import InvalidInput, ServerUnreachable

ATTACH_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout_s: float = ATTACH_TIMEOUT_S) -> None:
    """Fail fast, naming the address, when nothing listens at a Ray cluster's HOST:PORT
    (ray.init would retry for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidInput(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ServerUnreachable(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}): is `ray start "
            "--head` running there, and is its GCS port open to this machine?"
        ) from None


def connect(ray_address: str, **options: Any) -> None:
    """ray.init, its failures said in a line: an auth mismatch names the settings to fix."""
    import ray

    try:
        ray.init(address=ray_address, **options)
    except Exception as exc:
        text = str(exc)
        if "auth" in text.lower() or "token" in text.lower():
            raise ServerUnreachable(
                f"the Ray cluster at {ray_address} refused this driver's credentials: "
                "it uses token authentication, so set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN_PATH to a file holding its token (see the README)"
            ) from exc
        raise ServerUnreachable(f"cannot attach to Ray at {ray_address}: {text[:300]}") from exc
