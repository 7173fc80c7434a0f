"""Deployment routes of the REST API: deploy, undeploy, status, revoke the deployment's token.

Predictions themselves go to the deployment's own route, /models/<id>/predict, served by
its Ray Serve application (serve/deployments/replica.py); a model with no deployment is answered
there by the fallback application below.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from cluster.core.names import on_head
from jobs.models import deployments
from jobs.models import state as models
from ncloud import responses
from ncloud.bodies import MAX_MOUNTS, Count, Mount
from ncloud.errors import Conflict
from ncloud.protocol import host_of
from serve.auth import Caller
from serve.deployments.requests import authorize
from serve.deps import caller, control, store
from serve.errors import install_error_handlers
from serve.schemas import ObjectId

router = APIRouter()
DEFAULTS = deployments.Batching()


class DeployIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(1, ge=1, le=64)
    gpus: int = Field(0, ge=0, le=8)
    checkpoint: Count | None = Field(None, ge=0)
    max_batch: int = Field(DEFAULTS.max_batch, ge=1, le=1024, description="inputs per forward")
    batch_wait_ms: float = Field(
        DEFAULTS.batch_wait_ms, ge=0, le=1000, description="how long a batch waits to fill"
    )
    max_queue: int = Field(
        DEFAULTS.max_queue, ge=1, le=100_000, description="inputs waiting in a replica before 503"
    )
    volumes: list[Mount] = Field(default_factory=list, max_length=MAX_MOUNTS)


def _with_url(request: Request, found: responses.Deployment) -> responses.Deployment:
    """The endpoint's URL on the host this request came to, minus the app's own prefix (the
    API's /api/v1, the dashboard's /ui)."""
    base = str(request.base_url).rstrip("/")
    root = str(request.scope.get("root_path", "")).rstrip("/")
    base = base.removesuffix(root) if root and base.endswith(root) else host_of(base)
    return {**found, "url": f"{base}{found['route']}/predict"}


@router.post("/models/{model_id}/deploy", status_code=201)
def deploy(
    model_id: ObjectId, body: DeployIn, request: Request, c: Caller = Depends(caller)
) -> responses.Deployment:
    tenant = c.require_tenant()
    models.get(store(), tenant, model_id)
    batching = body.model_dump(include={"max_batch", "batch_wait_ms", "max_queue", "volumes"})
    found = control().call(
        "deploy_model", tenant, model_id, body.replicas, body.gpus, body.checkpoint, batching
    )
    return _with_url(request, found)


@router.post("/models/{model_id}/undeploy")
def undeploy(
    model_id: ObjectId, request: Request, c: Caller = Depends(caller)
) -> responses.Deployment:
    tenant = c.require_tenant()
    models.get(store(), tenant, model_id)
    return _with_url(request, control().call("undeploy_model", tenant, model_id))


@router.get("/models/{model_id}/deployment")
def deployment(
    model_id: ObjectId, request: Request, c: Caller = Depends(caller)
) -> responses.Deployment:
    tenant = c.require_tenant()
    return _with_url(request, deployments.get(store(), tenant, model_id).as_json())


@router.delete("/models/{model_id}/deployment/token")
def revoke_token(model_id: ObjectId, c: Caller = Depends(caller)) -> dict[str, Any]:
    tenant = c.require_tenant()
    deployments.revoke_token(store(), tenant, model_id)
    return {"model": model_id, "token_active": False}


def fallback_app() -> FastAPI:
    """Answers /models/<id>/... for models that have no running deployment: 401, 404 or 409."""
    app = FastAPI(title="ncloud predictions", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)

    @app.api_route("/{model_id}/{rest:path}", methods=["GET", "POST"])
    def not_deployed(model_id: str, rest: str, request: Request) -> None:
        s = store()
        known = deployments.tenant_of(s, int(model_id)) if model_id.isdigit() else None
        tenant = authorize(s, known, model_id, request)
        found = deployments.find(s, tenant, int(model_id))
        state = found.status.value if found else "not deployed"
        raise Conflict(f"model {model_id} is {state.lower()}: ncloud model deploy {model_id}")

    return app


def fallback_application(env: dict[str, str]) -> Any:
    app = fallback_app()

    @serve.deployment(
        name="fallback",
        ray_actor_options=on_head(env),
    )
    @serve.ingress(app)
    class Fallback:
        pass

    return Fallback.bind()  # type: ignore[attr-defined]
