"""The client over httpx.MockTransport: errors come back as the server's classes."""

from __future__ import annotations

import json

import httpx
import pytest

from ncloud.client import Client
from ncloud.errors import Conflict, Forbidden, NotFound, ServerError, ServerUnreachable


def _client(handler) -> Client:  # type: ignore[no-untyped-def]
    return Client(
        "http://api.test", token="nc_x_y", tenant="vision", transport=httpx.MockTransport(handler)
    )


def test_sends_token_and_tenant_and_parses_json() -> None:
    seen: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        seen["url"] = str(request.url)
        return httpx.Response(201, json={"name": "vision"})

    assert _client(handler).tenants.add("vision", 1) == {"name": "vision"}
    assert seen["authorization"] == "Bearer nc_x_y"
    assert seen["x-ncloud-tenant"] == "vision"
    assert seen["url"] == "http://api.test/api/v1/tenants"


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [(409, "quota_exceeded", Conflict), (403, "forbidden", Forbidden), (500, "nope", ServerError)],
)
def test_error_bodies_become_classes(status: int, code: str, cls: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=json.dumps({"code": code, "message": "m"}))

    with pytest.raises(cls):
        _client(handler).tenants.list()


def test_unreachable_server_says_how_to_start_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(
        ServerUnreachable,
        match=r"cannot reach ncloud at http://api.test: "
        r"is it running\? \(ncloud server start\)",
    ):
        _client(handler).info()


def test_ray_serves_own_404_is_a_stopped_server_not_a_missing_resource() -> None:
    """Attached to a cluster, `server stop` takes the API away but Ray Serve's proxy stays
    (the deployments keep answering): its 404 is plain text, not our {code, message}."""

    def handler(request: httpx.Request) -> httpx.Response:
        text = "Path '/api/v1/info' not found. Ping http://.../-/routes for available routes."
        return httpx.Response(404, text=text)

    with pytest.raises(ServerUnreachable, match=r"cannot reach ncloud at .*not ncloud's API"):
        _client(handler).info()

    def ours(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"code": "not_found", "message": "model 7 not found"})

    with pytest.raises(NotFound, match="model 7"):
        _client(ours).models.show(7)
