"""The dashboard as its own Ray Serve application (route prefix /ui) on zero reserved CPUs.

Every asset is served from here (Plotly.js from the plotly package, our stylesheet and
script from static/), so the pages work with no internet connection.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.core.names import on_head
from ncloud.errors import NcloudError
from serve.audit import AuditLog
from serve.deps import write_audit
from serve.limits import BodySizeLimit
from serve.ui import charts, pages, session
from serve.ui.session import BASE

log = logging.getLogger("ncloud.ui")

APP_NAME = "ncloud-ui"
ROUTE_PREFIX = BASE
MAX_FORM = 16 << 10


def plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


def _error(request: Request, status: int, message: str) -> Response:
    return pages.TEMPLATES.TemplateResponse(
        request,
        "error.html",
        {"base": BASE, "me": None, "status": status, "message": message},
        status_code=status,
    )


# Pages load only what ncloud serves, cannot be framed, and send no Referer elsewhere.
# Plotly sets inline styles on what it draws, hence 'unsafe-inline' for styles (not scripts).
HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
     b"img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]  # fmt: skip


class SecurityHeaders:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def create_ui_app() -> FastAPI:
    app = FastAPI(title="ncloud dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(charts.HERE / "static")), name="static")

    @app.get("/vendor/plotly.min.js")
    def plotly_asset() -> FileResponse:
        return FileResponse(plotly_js(), media_type="text/javascript")

    @app.exception_handler(session.SignedOut)
    async def on_signed_out(_: Request, exc: session.SignedOut) -> Response:
        return session.sign_in_page(exc.message)

    @app.exception_handler(NcloudError)
    async def on_refused(request: Request, exc: NcloudError) -> Response:
        return _error(request, exc.http_status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def on_bad_request(request: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(request, 422, f"bad request: {where}")

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> Response:
        log.exception("the dashboard failed on %s", request.url.path)
        return _error(request, 500, "internal error: the server log says more")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail))

    app.add_middleware(BodySizeLimit, max_body=MAX_FORM, max_text=MAX_FORM, max_file=MAX_FORM)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(AuditLog, write=write_audit, via="ui ")
    return app


def ui_application(env: dict[str, str]) -> Any:
    app = create_ui_app()

    @serve.deployment(
        name="ui",
        ray_actor_options=on_head(env),
        max_ongoing_requests=64,
    )
    @serve.ingress(app)
    class Dashboard:
        pass

    return Dashboard.bind()  # type: ignore[attr-defined]
