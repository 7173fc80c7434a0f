"""What every route needs: the store, the controller, and who is calling."""

from __future__ import annotations

import functools

from fastapi import Request

from cluster.core import audit
from cluster.core.store import Store, open_store
from ncloud.settings import settings
from serve.audit import TENANT_KEY, USER_KEY
from serve.auth import Caller, identify
from serve.control import ControlPlane
from serve.throttle import FailedAuth


@functools.cache
def store() -> Store:
    return open_store(settings().db_url)


@functools.cache
def control() -> ControlPlane:
    return ControlPlane()


@functools.cache
def failed_auth() -> FailedAuth:
    return FailedAuth(settings().auth_failures_per_minute)


def caller(request: Request) -> Caller:
    """Who is calling; left in the request's state for the audit log (serve.audit)."""
    found = identify(request, store(), failed_auth())
    mine = found.user.tenants
    setattr(request.state, USER_KEY, found.user.email)
    setattr(request.state, TENANT_KEY, found.tenant or (mine[0] if len(mine) == 1 else None))
    return found


def write_audit(row: audit.Entry) -> None:
    audit.record(store(), row)
