"""The REST API under /api/v1: thin routes over cluster/, one error boundary."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query

import ncloud
from cluster.core import accounts, audit, tokens
from jobs.models import accounting
from ncloud import responses
from ncloud.errors import InvalidInput, NotFound
from ncloud.settings import settings
from ncloud.validation import check_name, parse_since, parse_size
from serve.audit import AuditLog
from serve.auth import Caller
from serve.deps import caller, control, store, write_audit
from serve.errors import ERROR_RESPONSES, install_error_handlers
from serve.limits import BodySizeLimit
from serve.routes import batches as batch_api
from serve.routes import datasets as datasets_api
from serve.routes import deployments as deploy_api
from serve.routes import models as models_api
from serve.routes import volumes as volumes_api
from serve.schemas import TenantIn, TenantPatch, TokenIn, UserIn, UserPatch
from serve.uploads import manifest_limit

log = logging.getLogger("ncloud.api")


def _user(u: accounts.User) -> responses.User:
    return {
        "email": u.email,
        "admin": u.is_admin,
        "tenants": list(u.tenants),
        "created_at": u.created_at.isoformat(),
    }


def _tenant(t: accounts.Tenant) -> responses.Tenant:
    return {
        "name": t.name,
        "cpus": t.cpus,
        "gpus": t.gpus,
        "memory": t.memory,
        "placement_group": t.placement_group,
        "created_at": t.created_at.isoformat(),
    }


router = APIRouter()


@router.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "version": ncloud.__version__, "api_version": ncloud.API_VERSION}


@router.get("/info")
def info(c: Caller = Depends(caller)) -> dict[str, Any]:
    tenant = c.tenant or (c.user.tenants[0] if len(c.user.tenants) == 1 else None)
    return {
        "version": ncloud.__version__,
        "api_version": ncloud.API_VERSION,
        "user": _user(c.user),
        "tenant": tenant,
        "cluster": control().call("cluster"),
    }


# -- tenants (admin) -----------------------------------------------------------------------


@router.post("/tenants", status_code=201)
def create_tenant(body: TenantIn, c: Caller = Depends(caller)) -> dict[str, Any]:
    c.require_admin()
    check_name(body.name, "tenant name")
    return control().call("create_tenant", body.name, body.cpus, body.gpus, parse_size(body.memory))


@router.get("/tenants")
def list_tenants(c: Caller = Depends(caller)) -> list[responses.Tenant]:
    found = accounts.list_tenants(store())
    return [_tenant(t) for t in found if c.user.is_admin or t.name in c.user.tenants]


@router.get("/tenants/{name}")
def show_tenant(name: str, c: Caller = Depends(caller)) -> responses.TenantDetail:
    if not c.user.is_admin and name not in c.user.tenants:
        raise NotFound(f"no tenant {name!r}")
    tenant = accounts.get_tenant(store(), name)
    users = [u.email for u in accounts.list_users(store(), tenant=name)]
    return {
        **_tenant(tenant),
        "users": users,
        "reservation": control().call("describe_tenant", name),
    }


@router.patch("/tenants/{name}")
def modify_tenant(name: str, body: TenantPatch, c: Caller = Depends(caller)) -> dict[str, Any]:
    c.require_admin()
    old = accounts.get_tenant(store(), name)
    cpus = old.cpus if body.cpus is None else body.cpus
    gpus = old.gpus if body.gpus is None else body.gpus
    memory = old.memory if body.memory is None else parse_size(body.memory)
    return control().call("resize_tenant", name, cpus, gpus, memory)


@router.delete("/tenants/{name}")
def delete_tenant(name: str, force: bool = False, c: Caller = Depends(caller)) -> dict[str, Any]:
    c.require_admin()
    return control().call("delete_tenant", name, force)


# -- users (admin) -------------------------------------------------------------------------


@router.post("/users", status_code=201)
def create_user(body: UserIn, c: Caller = Depends(caller)) -> responses.NewUser:
    c.require_admin()
    user, token = accounts.create_user(store(), body.email, body.tenants, body.admin)
    return {**_user(user), "token": token}


@router.get("/users")
def list_users(tenant: str | None = None, c: Caller = Depends(caller)) -> list[responses.User]:
    c.require_admin()
    return [_user(u) for u in accounts.list_users(store(), tenant)]


@router.get("/users/{email}")
def show_user(email: str, c: Caller = Depends(caller)) -> responses.User:
    if not c.user.is_admin and email.lower() != c.user.email:
        c.require_admin()
    return _user(accounts.get_user(store(), email))


@router.patch("/users/{email}")
def modify_user(email: str, body: UserPatch, c: Caller = Depends(caller)) -> responses.User:
    c.require_admin()
    return _user(
        accounts.modify_user(store(), email, body.add_tenants, body.remove_tenants, body.admin)
    )


@router.delete("/users/{email}")
def delete_user(email: str, c: Caller = Depends(caller)) -> responses.User:
    c.require_admin()
    if email.lower() == c.user.email:
        raise InvalidInput("you cannot remove yourself; ask another admin")
    return _user(accounts.delete_user(store(), email))


# -- a user's own tokens -------------------------------------------------------------------


@router.post("/tokens", status_code=201)
def create_token(body: TokenIn, c: Caller = Depends(caller)) -> responses.NewToken:
    """A new token for yourself or, as an admin, for any user; its secret is shown once."""
    owner = c.user
    if body.user is not None and body.user.lower() != c.user.email:
        c.require_admin()
        owner = accounts.get_user(store(), body.user)
    token = tokens.create_token(store(), owner, body.name)
    return {"id": token.split("_")[1], "name": body.name, "user": owner.email, "token": token}


@router.get("/tokens")
def list_tokens(c: Caller = Depends(caller)) -> list[responses.Token]:
    return [
        {
            "id": t.id,
            "name": t.name,
            "created_at": t.created_at.isoformat(),
            "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
            "revoked": t.revoked_at is not None,
        }
        for t in tokens.list_tokens(store(), c.user)
    ]


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: str, c: Caller = Depends(caller)) -> dict[str, Any]:
    tokens.revoke_token(store(), c.user, token_id)
    return {"id": token_id, "revoked": True}


# -- the audit log (admin) -----------------------------------------------------------------


@router.get("/audit")
def audit_log(
    user: str | None = None,
    tenant: str | None = None,
    since: str | None = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_LIST)] = 1000,
    c: Caller = Depends(caller),
) -> list[responses.AuditEntry]:
    """Admins: the newest state-changing calls (oldest first), by user, tenant and time."""
    c.require_admin()
    found = audit.entries(
        store(), user, parse_since(since) if since is not None else None, tenant, limit
    )
    return [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "user": e.user,
            "tenant": e.tenant,
            "action": e.action,
            "object": e.object,
            "status": e.status,
            "outcome": e.outcome,
            "address": e.address,
            "detail": e.detail,
        }
        for e in found
    ]


# -- usage ---------------------------------------------------------------------------------


@router.get("/usage")
def usage_report(
    tenant: str | None = None, since: str | None = None, c: Caller = Depends(caller)
) -> responses.Usage:
    """CPU-, GPU- and memory-hours held, per run and deployment: the caller's tenant (or
    `tenant`, one of theirs); an admin naming none gets every tenant's."""
    start = parse_since(since) if since is not None else None
    wanted = tenant or c.tenant
    if wanted is None and c.user.is_admin:
        return accounting.report(store(), None, start)
    return accounting.report(store(), Caller(c.user, wanted).require_tenant(), start)


# -- the tenant's resources ----------------------------------------------------------------


@router.get("/resources")
def resources(c: Caller = Depends(caller)) -> dict[str, Any]:
    tenant = c.require_tenant()
    return control().call("describe_tenant", tenant)


def create_app() -> FastAPI:
    app = FastAPI(
        title="ncloud",
        version=ncloud.__version__,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    routers = [router, datasets_api.router, volumes_api.router, models_api.router]
    for found in [*routers, deploy_api.router, batch_api.router]:
        app.include_router(found, responses=ERROR_RESPONSES)  # declared in the OpenAPI

    install_error_handlers(app)

    s = settings()
    app.add_middleware(
        BodySizeLimit,
        max_body=s.max_body_bytes,
        max_text=manifest_limit(),
        max_file=s.max_file_bytes,
    )
    app.add_middleware(AuditLog, write=write_audit)  # outermost: sees every answer
    return app
