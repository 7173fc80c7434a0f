"""ASGI middleware that refuses request bodies over a size limit with 413, without reading them."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ncloud.errors import PayloadTooLarge
from ncloud.protocol import ARCHIVE_TYPE, archive_limit
from ncloud.validation import format_size

_FILE_TYPES = ("multipart/form-data", "application/octet-stream")


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, when it sent a valid one."""
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


def counting(receive: Receive, limit: int) -> Receive:
    """`receive` that raises TooLarge once the body passes `limit` bytes."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise TooLarge(limit)
        return message

    return counted


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is over the {format_size(limit)} limit")


class BodySizeLimit:
    """JSON bodies are held to max_body bytes, text (a manifest) to max_text, file uploads to
    max_file. A route may hold its body to less as it reads it (a manifest sent as bytes)."""

    def __init__(self, app: ASGIApp, max_body: int, max_text: int, max_file: int) -> None:
        self.app, self.max_body, self.max_text, self.max_file = app, max_body, max_text, max_file

    def _limit(self, scope: Scope) -> int:
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if content_type.startswith(ARCHIVE_TYPE):
            return archive_limit(self.max_file)
        if content_type.startswith(_FILE_TYPES):
            return self.max_file
        return self.max_text if content_type.startswith("text/") else self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit)
            return
        try:
            await self.app(scope, counting(receive, limit), send)
        except TooLarge:
            await _refuse(send, limit)


async def _refuse(send: Send, limit: int) -> None:
    error = too_large(limit)
    body = json.dumps(error.to_body()).encode()
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": error.http_status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
