"""What every route needs: the store, the controller, and who is calling."""

from __future__ import annotations

import functools

from fastapi import Request

from cluster.core.store import Store, open_store
from ncloud.settings import settings
from serve.auth import Caller, identify
from serve.control import ControlPlane


@functools.cache
def store() -> Store:
    return open_store(settings().db_url)


@functools.cache
def control() -> ControlPlane:
    return ControlPlane()


def caller(request: Request) -> Caller:
    return identify(request, store())
