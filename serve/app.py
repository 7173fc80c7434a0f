"""The REST API as a Ray Serve application (route prefix /api/v1) on zero reserved CPUs."""

from __future__ import annotations

from typing import Any

from ray import serve

from cluster.core.names import on_head
from ncloud.protocol import API_PREFIX
from serve.api import create_app

APP_NAME = "ncloud-api"
ROUTE_PREFIX = API_PREFIX


def api_application(env: dict[str, str], replicas: int = 1) -> Any:
    """Bind the API deployment; env carries the NCLOUD_* settings into its replicas."""
    app = create_app()

    @serve.deployment(
        name="api",
        num_replicas=replicas,
        ray_actor_options=on_head(env),
        max_ongoing_requests=64,
        health_check_period_s=5,
    )
    @serve.ingress(app)
    class Api:
        def __init__(self) -> None:
            # Here, in the replica that checks specs, not in the driver that built the app:
            # a check sandbox (torch imported) is waiting before the first submit.
            from jobs.sandbox import check

            check.warm()

    return Api.bind()  # type: ignore[attr-defined]
