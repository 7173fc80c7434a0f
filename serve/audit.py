"""Writes the audit log (cluster/core/audit.py): one row per state-changing call, once answered.

Pure ASGI around the API: it watches the answer's status (and, for an error, its `code`)
as it is sent, and who called from what serve.deps.caller left in the request's state. A
call that never authenticated is not a row: the failed-authentication throttle counts those.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import anyio

from cluster.core import audit

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
USER_KEY, TENANT_KEY = "ncloud_user", "ncloud_tenant"  # in the request's state
ERROR_BODY = 4096  # bytes of an error's body read for its code and message

log = logging.getLogger("ncloud.audit")

Scope = dict[str, Any]
Message = dict[str, Any]


def _outcome(status: int, body: bytes) -> tuple[str, str | None]:
    if status < 400:
        return "ok", None
    try:
        found = json.loads(body)
        return str(found.get("code") or status), str(found.get("message") or "") or None
    except (ValueError, AttributeError):
        return str(status), None


def _what(scope: Scope) -> tuple[str, str | None]:
    """("POST /models/{model_id}/stop", "model_id=3"): the route's template and its ids."""
    route = scope.get("route")
    template = getattr(route, "path", None) or scope.get("path", "")
    params = scope.get("path_params") or {}
    obj = ", ".join(f"{k}={v}" for k, v in params.items()) or None
    return f"{scope['method']} {template}", obj


class AuditLog:
    def __init__(
        self, app: Callable[..., Any], write: Callable[[audit.Entry], None], via: str = ""
    ) -> None:
        """via: what each action starts with ("ui " for the dashboard's forms)."""
        self.app, self.write, self.via = app, write, via

    async def __call__(
        self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http" or scope.get("method") not in WRITES:
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        status, body = 500, bytearray()

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status >= 400:
                body.extend(message.get("body", b"")[: ERROR_BODY - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            user = state.get(USER_KEY)
            if user is not None:
                action, obj = _what(scope)
                action = self.via + action
                outcome, detail = _outcome(status, bytes(body))
                client = scope.get("client")
                row = audit.entry(
                    user, state.get(TENANT_KEY), action, obj, status, outcome,
                    client[0] if client else None, detail,
                )  # fmt: skip
                try:
                    await anyio.to_thread.run_sync(self.write, row)
                except Exception:  # the answer is sent: say so loudly, do not fail it
                    log.exception("could not write the audit log row %s", row)
