"""What every route needs: the store, the controller, and who is calling."""

from __future__ import annotations

import functools

from fastapi import Request

from cluster.core.store import Store, open_store
from ncloud.settings import settings
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
    return identify(request, store(), failed_auth())
