"""A deployed model's request handling: who may ask, query parameters, paths, errors."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request

from cluster.core import accounts
from jobs.models import deployments
from jobs.models import state as models
from jobs.models.options import TrainOptions
from ncloud.errors import InvalidInput, NotFound, Unauthenticated
from serve.deployments.requests import authorize, query, relative_path
from serve.errors import error_response


def _request(path: str, query_string: str = "", root: str = "/models/7") -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": root,
        "query_string": query_string.encode(),
        "headers": [],
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("qs", "expected"),
    [("", (5, False)), ("k=3", (3, False)), ("k=-2&raw=true", (-2, True)), ("raw=0", (5, False))],
)
def test_query_reads_k_and_raw(qs: str, expected: tuple[int, bool]) -> None:
    assert query(_request("/models/7/predict", qs)) == expected


@pytest.mark.parametrize(
    ("qs", "match"), [("k=five", "k must be an integer"), ("raw=maybe", "raw")]
)
def test_a_bad_query_parameter_is_a_422_naming_it(qs: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        query(_request("/models/7/predict", qs))


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/models/7/predict", "/models/7", "/predict"),
        ("/models/7/predict/", "/models/7", "/predict"),
        ("/models/7", "/models/7", "/"),
        ("/models/7/", "/models/7", "/"),
        ("/predict", "", "/predict"),
    ],
)
def test_paths_are_read_under_the_deployment_route(path: str, root: str, expected: str) -> None:
    assert relative_path(_request(path, root=root)) == expected


def test_errors_are_code_and_message_and_bugs_do_not_leak_their_text() -> None:
    found = error_response(NotFound("no model 7"))
    assert found.status_code == 404
    assert json.loads(bytes(found.body)) == {"code": "not_found", "message": "no model 7"}
    bug = error_response(KeyError("secret detail"))
    assert bug.status_code == 500 and b"secret detail" not in bytes(bug.body)


def test_a_body_without_a_length_is_counted_and_stopped_past_the_limit() -> None:
    from serve import limits

    messages = [{"type": "http.request", "body": b"x" * 6, "more_body": True} for _ in range(2)]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def read_all() -> int:
        counted = limits.counting(receive, 10)  # type: ignore[arg-type]
        first = await counted()
        assert first["body"] == b"x" * 6
        await counted()
        return 0

    with pytest.raises(limits.TooLarge) as caught:
        asyncio.run(read_all())
    assert caught.value.limit == 10
    assert limits.too_large(10).http_status == 413


@pytest.mark.parametrize("token", ["ncd_", "ncd_x", "ncd_7", "ncd_7_", "ncd__s", "ncd_8_s"])
def test_a_malformed_or_foreign_deployment_token_is_refused(store: object, token: str) -> None:
    from jobs.models import deployments
    from ncloud.errors import Unauthenticated

    with pytest.raises(Unauthenticated, match="invalid or revoked deployment token"):
        deployments.check_token(store, 7, token)  # type: ignore[arg-type]


def _with_auth(header: str | None) -> Request:
    headers = [(b"authorization", header.encode())] if header is not None else []
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_who_may_ask_a_model(store) -> None:  # type: ignore[no-untyped-def]
    """The replica and the not-deployed fallback both answer with this one check."""
    for name in ("vision", "audio"):
        accounts.create_tenant(store, name, 1, 0, 0)
    _, ada = accounts.create_user(store, "ada@example.com", ["vision"])
    _, bob = accounts.create_user(store, "bob@example.com", ["audio"])
    _, root = accounts.create_user(store, "root@example.com", [], is_admin=True)
    opts = TrainOptions(epochs=1, batch_size=8)
    model, _ = models.create(store, "vision", "m", "net.yaml", "layers: []", 1, None, None, opts)
    _, token = deployments.begin(store, "vision", model.id, 1, 0, None, [0], deployments.Batching())
    for ok in (ada, root, token, f"  {token} "):
        assert authorize(store, "vision", model.id, _with_auth(f"Bearer {ok}")) == "vision"
    assert authorize(store, "vision", model.id, _with_auth(f"bearer {ada}")) == "vision"
    bad = [None, "", ada, f"Basic {ada}", "Bearer ", "Bearer nc_x_y", f"Bearer {token}x"]
    bad += ["Bearer ncd_", f"Bearer ncd_{model.id}_", f"Bearer ncd_{model.id + 1}_secret"]
    for header in bad:
        with pytest.raises(Unauthenticated):
            authorize(store, "vision", model.id, _with_auth(header))
    with pytest.raises(NotFound):  # another tenant's user: the model is not theirs to see
        authorize(store, "vision", model.id, _with_auth(f"Bearer {bob}"))
    with pytest.raises(Unauthenticated):  # scoped to its own model
        authorize(store, "vision", model.id + 1, _with_auth(f"Bearer {token}"))
    # No such model: a user's token learns that (404), a deployment token is refused (401).
    for missing in (model.id + 1, "abc"):
        with pytest.raises(NotFound):
            authorize(store, None, missing, _with_auth(f"Bearer {ada}"))
        with pytest.raises(Unauthenticated):
            authorize(store, None, missing, _with_auth(f"Bearer {token}"))
        with pytest.raises(Unauthenticated):
            authorize(store, None, missing, _with_auth(None))
    deployments.revoke_token(store, "vision", model.id)
    with pytest.raises(Unauthenticated):
        authorize(store, "vision", model.id, _with_auth(f"Bearer {token}"))
