"""The one error boundary of every HTTP app: domain errors become {code, message} with a status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cluster.core.storage import storage_error
from ncloud.errors import InvalidInput, NcloudError, ServerError

log = logging.getLogger("ncloud.api")


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


def install_error_handlers(app: FastAPI) -> None:
    """NcloudError -> its status; a bad request -> 422; anything else -> 500 without a trace."""

    @app.exception_handler(NcloudError)
    async def on_domain_error(_: Request, exc: NcloudError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = InvalidInput(_validation_message(exc))
        return JSONResponse(error.to_body(), status_code=error.http_status)

    @app.exception_handler(Exception)
    async def on_bug(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)
