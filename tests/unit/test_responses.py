"""The API's answers are the types ncloud.responses declares: the routes say so, FastAPI
checks each answer against them, and the client hands them back as they came."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.exceptions import ResponseValidationError
from fastapi.routing import APIRoute

from ncloud import responses
from ncloud.client import Client
from serve import api as api_routes
from serve.routes import batches, datasets, deployments, models, volumes

# answers that are not a resource: a file, a listing of files, a controller's report, an
# acknowledgement of a removal
UNTYPED = {
    "api": {"health", "info", "create_tenant", "modify_tenant", "delete_tenant",
            "revoke_token", "resources"},
    "datasets": {"list_files", "download_file"},
    "volumes": {"delete_volume", "put_file", "put_files", "get_file", "delete_file"},
    "models": {"results", "result_file"},
    "deployments": {"revoke_token"},
    "batches": {"result"},
}  # fmt: skip


def _declared(route: APIRoute) -> type | None:
    model = route.response_model
    inner = getattr(model, "__args__", (model,))[0]  # list[X] -> X
    return inner if getattr(inner, "__module__", None) == responses.__name__ else None


def test_each_resource_route_declares_its_answer() -> None:
    typed = set()
    for module in (api_routes, datasets, volumes, models, deployments, batches):
        name = module.__name__.rsplit(".", 1)[-1]
        routes = [r for r in module.router.routes if isinstance(r, APIRoute)]
        assert {r.name for r in routes if _declared(r) is None} == UNTYPED[name], name
        typed |= {_declared(r) for r in routes}
    assert {responses.Model, responses.ModelDetail, responses.Logs, responses.Dataset,
            responses.NewDataset, responses.Volume, responses.VolumeDetail, responses.Batch,
            responses.NewBatch, responses.Deployment, responses.User, responses.NewUser,
            responses.Tenant, responses.TenantDetail, responses.Token,
            responses.NewToken} <= typed  # fmt: skip


def test_an_answer_has_the_declared_keys(api: Callable[..., Client]) -> None:
    ada = api("ada", "vision")
    made = ada.volumes.create("vocab")
    assert set(made) == set(responses.Volume.__annotations__)
    assert set(ada.volumes.show(made["id"])) == set(responses.VolumeDetail.__annotations__)
    assert [set(v) for v in ada.volumes.list()] == [set(responses.Volume.__annotations__)]
    assert set(ada.users.show("ada@example.com")) == set(responses.User.__annotations__)


def test_an_answer_that_drifts_from_its_declaration_fails_instead_of_passing_wrong(
    api: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = volumes._volume
    monkeypatch.setattr(
        volumes, "_volume", lambda v: {k: x for k, x in real(v).items() if k != "bytes"}
    )
    # the in-process client re-raises what the server raised; served, it is a 500 internal
    with pytest.raises(ResponseValidationError, match="bytes"):
        api("ada", "vision").volumes.create("vocab")
