"""The one error boundary of every HTTP app: domain errors become {code, message} with a status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.core.storage import storage_error
from ncloud.errors import InvalidInput, NcloudError, ServerError

log = logging.getLogger("ncloud.api")


class ErrorBody(BaseModel):
    """Every error the API answers: a stable code (ncloud.errors) and one readable line."""

    code: str
    message: str


_WHEN = {
    401: "no token, or a wrong, unknown or revoked one",
    403: "a valid token that may not do this (not an admin, not in that tenant)",
    404: "no such object in this tenant (another tenant's is not found either)",
    409: "it exists already, or its state does not allow this now",
    413: "the body, a file or a manifest is over its limit",
    422: "the request is wrong: a bad name, number, spec or body, named in the message",
    429: "too many failed authentications from this address or for this token id",
    503: "busy or not configured (S3): retry after Retry-After where it is sent",
    507: "the storage is full; nothing of this write was kept",
}
# What every route may answer besides its success, for the OpenAPI (and its fuzzers).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": when} for status, when in _WHEN.items()
}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_response(exc: Exception, log: logging.Logger = log) -> JSONResponse:
    """A domain error as {code, message} with its status, a storage failure as what it means
    (storage_error); anything else a 500 without a trace."""
    if not isinstance(exc, NcloudError):
        exc = storage_error(exc) or exc
    if not isinstance(exc, NcloudError):
        log.error("unhandled error", exc_info=exc)
        exc = ServerError(f"internal error ({type(exc).__name__}); see the server log")
    wait = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(wait)} if wait is not None else None
    return JSONResponse(exc.to_body(), status_code=exc.http_status, headers=headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def install_error_handlers(app: FastAPI) -> None:
    """NcloudError -> its status; a bad request -> 422; anything else -> 500 without a trace."""

    @app.exception_handler(NcloudError)
    async def on_domain_error(_: Request, exc: NcloudError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = InvalidInput(_validation_message(exc))
        return JSONResponse(error.to_body(), status_code=error.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's and Starlette's own refusals (a body that does not parse, no such
        route, a method the route lacks) in the same {code, message} shape."""
        if exc.status_code == 400:  # FastAPI's "error parsing the body"
            error = InvalidInput(f"the request body does not parse: {exc.detail}")
            return JSONResponse(error.to_body(), status_code=error.http_status)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        body = {"code": code, "message": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_bug(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)
