"""The dashboard's pages: each reads through the REST API's own route functions, so it shows
exactly what the caller's token may see (another tenant's model is a 404 here as there)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from jobs.models import accounting
from jobs.models import state as models
from ncloud.errors import InvalidInput, NcloudError
from ncloud.validation import format_size
from serve import api as api_routes
from serve.auth import Caller
from serve.deps import control, store
from serve.routes import batches as batch_routes
from serve.routes import datasets as dataset_routes
from serve.routes import deployments as deploy_routes
from serve.routes import models as model_routes
from serve.routes import volumes as volume_routes
from serve.ui import charts, session
from serve.ui.session import BASE

TEMPLATES = Jinja2Templates(directory=str(charts.HERE / "templates"))
TEMPLATES.env.filters["size"] = format_size
TERMINAL = {"Completed", "Failed", "Stopped"}
MAX_COMPARE = 8

router = APIRouter()


def page(request: Request, c: Caller, name: str, status_code: int = 200, **values: Any) -> Any:
    return TEMPLATES.TemplateResponse(
        request,
        name,
        {"base": BASE, "me": c.user, "tenant": c.tenant, "terminal": TERMINAL, **values},
        status_code=status_code,
    )


def _tenant(c: Caller) -> str:
    if c.tenant is None and c.user.is_admin:
        raise InvalidInput(f"pick a tenant to act in first: {BASE}/admin")
    if c.tenant is None:
        raise InvalidInput("you are in no tenant: ask an admin to add you to one")
    return c.tenant


# -- signing in and out -------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, message: str = "") -> Any:
    return TEMPLATES.TemplateResponse(
        request, "login.html", {"base": BASE, "message": message[:300], "me": None}
    )


@router.post("/login")
def login(request: Request, token: Annotated[str, Form(max_length=session.MAX_TOKEN)]) -> Any:
    session.same_origin(request)  # no other site signs a browser in as someone else
    try:
        session.check(request, token)
    except NcloudError as e:
        message = f"that token was refused: {e.message}"
        return TEMPLATES.TemplateResponse(
            request,
            "login.html",
            {"base": BASE, "message": message, "me": None},
            status_code=e.http_status,
        )
    return session.start(token.strip())


@router.post("/logout")
def logout(request: Request) -> Response:
    session.same_origin(request)
    out = session.sign_in_page("signed out")
    out.delete_cookie(session.TENANT, path=BASE)
    return out


@router.post("/tenant")
def pick_tenant(
    request: Request,
    tenant: Annotated[str, Form(max_length=64)],
    c: Caller = Depends(session.signed_in),
) -> Response:
    session.same_origin(request)
    Caller(c.user, tenant).require_tenant()  # a member (or an admin), or 403
    out = RedirectResponse(f"{BASE}/models", status_code=303)
    out.set_cookie(session.TENANT, tenant, httponly=True, samesite="strict", path=BASE)
    return out


@router.get("/")
def home() -> Response:
    return RedirectResponse(f"{BASE}/models", status_code=303)


# -- models ---------------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, c: Caller = Depends(session.signed_in)) -> Any:
    if c.tenant is None and c.user.is_admin:  # an admin in no tenant: pick one there
        return RedirectResponse(f"{BASE}/admin", status_code=303)
    _tenant(c)
    return page(request, c, "models.html", models=model_routes.list_models(None, c))


@router.get("/models/table", response_class=HTMLResponse)
def models_table(request: Request, c: Caller = Depends(session.signed_in)) -> Any:
    """The table alone, which the models page fetches again every two seconds."""
    _tenant(c)
    return page(request, c, "models_table.html", models=model_routes.list_models(None, c))


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(
    request: Request, model_id: model_routes.ObjectId, c: Caller = Depends(session.signed_in)
) -> Any:
    _tenant(c)
    found = model_routes.show_model(model_id, c)
    spec = _spec_text(found, c)
    columns = ["epoch", "attempt", *charts.BUILT_IN, *charts.custom_keys(found["metrics"])]
    return page(
        request, c, "model.html", m=found, spec=spec, columns=columns, **_live(model_id, c, found)
    )


@router.get("/models/{model_id}/data")
def model_data(model_id: model_routes.ObjectId, c: Caller = Depends(session.signed_in)) -> Any:
    """What the run page redraws while the run goes on: status, curves, log tail."""
    _tenant(c)
    found = model_routes.show_model(model_id, c)
    live = _live(model_id, c, found)
    return JSONResponse(
        {
            "status": found["status"],
            "epochs_done": found["epochs_done"],
            "epochs": found["epochs"],
            "restarts": found["restarts"],
            "deployment": found["deployment"],
            "checkpoints": found["checkpoints"],
            "log": live["log"],
            "charts": live["charts"],
        }
    )


def _live(model_id: int, c: Caller, found: Any) -> dict[str, Any]:
    lines = model_routes.logs(model_id, 0, 5000, c)["lines"][-200:]
    return {
        "log": "\n".join(line["line"] for line in lines),
        "charts": charts.run_charts(
            found["name"],
            found["metrics"],
            found["progress"] if found["status"] == "Running" else None,
        ),
    }


def _spec_text(found: Any, c: Caller) -> str:
    return models.get(store(), _tenant(c), int(found["id"])).spec_text


@router.post("/models/{model_id}/stop")
async def stop(
    request: Request, model_id: model_routes.ObjectId, c: Caller = Depends(session.signed_in)
) -> Response:
    session.same_origin(request)
    await model_routes.stop(model_id, wait=False, c=c)
    return RedirectResponse(f"{BASE}/models/{model_id}", status_code=303)


@router.post("/models/{model_id}/resume")
def resume(
    request: Request, model_id: model_routes.ObjectId, c: Caller = Depends(session.signed_in)
) -> Response:
    session.same_origin(request)
    model_routes.resume(model_id, model_routes.ResumeIn.model_validate({}), c)
    return RedirectResponse(f"{BASE}/models/{model_id}", status_code=303)


@router.post("/models/{model_id}/deploy", response_class=HTMLResponse)
def deploy(
    request: Request, model_id: model_routes.ObjectId, c: Caller = Depends(session.signed_in)
) -> Any:
    session.same_origin(request)
    made = deploy_routes.deploy(model_id, deploy_routes.DeployIn.model_validate({}), request, c)
    return page(request, c, "deployed.html", d=made, model_id=model_id)


@router.post("/models/{model_id}/undeploy")
def undeploy(
    request: Request, model_id: model_routes.ObjectId, c: Caller = Depends(session.signed_in)
) -> Response:
    session.same_origin(request)
    deploy_routes.undeploy(model_id, request, c)
    return RedirectResponse(f"{BASE}/models/{model_id}", status_code=303)


# -- compare --------------------------------------------------------------------------------


def _ids(ids: str) -> list[int]:
    try:
        found = [int(part) for part in ids.replace(" ", "").split(",") if part]
    except ValueError:
        raise InvalidInput(f"ids must be model ids separated by commas, not {ids!r}") from None
    if not 1 <= len(found) <= MAX_COMPARE or any(not 0 < i < 2**62 for i in found):
        raise InvalidInput(f"compare 1 to {MAX_COMPARE} models by id")
    return list(dict.fromkeys(found))


@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    ids: Annotated[str, Query(max_length=200)] = "",
    c: Caller = Depends(session.signed_in),
) -> Any:
    wanted = _ids(ids) if ids else []
    _tenant(c)
    if not wanted:
        listed = model_routes.list_models(None, c)
        return page(request, c, "compare.html", runs=[], charts=[], models=listed)
    runs = [model_routes.show_model(i, c) for i in wanted]
    return page(request, c, "compare.html", runs=runs, charts=charts.compare_charts(runs))


# -- the tenant's other objects --------------------------------------------------------------


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, c: Caller = Depends(session.signed_in)) -> Any:
    _tenant(c)
    return page(request, c, "datasets.html", datasets=dataset_routes.list_datasets(c))


@router.get("/volumes", response_class=HTMLResponse)
def volumes_page(request: Request, c: Caller = Depends(session.signed_in)) -> Any:
    _tenant(c)
    return page(request, c, "volumes.html", volumes=volume_routes.list_volumes(c))


@router.get("/deployments", response_class=HTMLResponse)
def deployments_page(request: Request, c: Caller = Depends(session.signed_in)) -> Any:
    _tenant(c)
    shown = [
        deploy_routes.deployment(m["id"], request, c)
        for m in model_routes.list_models(None, c)
        if m["deployment"] is not None
    ]
    batches = batch_routes.list_batches(c)
    return page(request, c, "deployments.html", deployments=shown, batches=batches)


@router.get("/resources", response_class=HTMLResponse)
async def resources_page(request: Request, c: Caller = Depends(session.signed_in)) -> Any:
    tenant = _tenant(c)
    found = await run_in_threadpool(control().call, "describe_tenant", tenant)
    used = await run_in_threadpool(accounting.report, store(), tenant, None)
    return page(request, c, "resources.html", r=found, usage=used)


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, c: Caller = Depends(session.signed_in)) -> Any:
    c.require_admin()
    return page(
        request,
        c,
        "admin.html",
        tenants=api_routes.list_tenants(c),
        users=api_routes.list_users(None, c),
        audit=api_routes.audit_log(None, None, None, 200, c),
    )
