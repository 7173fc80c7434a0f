"""What client and server must spell the same way: the API prefix, headers (stdlib only)."""

from __future__ import annotations

API_PREFIX = "/api/v1"
TENANT_HEADER = "X-Ncloud-Tenant"
DEPLOYMENT_PREFIX = "/models"  # a deployment answers at /models/<id>/predict, outside the API


def host_of(url: str) -> str:
    """The host part of an API URL: what users type in `configure --host`."""
    return url.rstrip("/").removesuffix(API_PREFIX)
