"""Signing in to the dashboard: a token in an HttpOnly cookie, checked like a bearer token.

The token is posted once by the sign-in form and kept only in the `ncloud_session` cookie
(HttpOnly, SameSite=Strict, path /ui), never in a URL. Every page turns the cookie back into
a Caller through serve.auth with the API's own checks and throttle, so a revoked, expired or
tampered cookie signs the browser out. A state-changing form must come from this origin.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.responses import RedirectResponse

from ncloud.errors import Forbidden, NcloudError, Unauthenticated
from serve.audit import TENANT_KEY, USER_KEY
from serve.auth import Caller, identify_header
from serve.deps import failed_auth, store

BASE = "/ui"
SESSION = "ncloud_session"
TENANT = "ncloud_tenant"
MAX_TOKEN = 512  # longer than any token ncloud makes


class SignedOut(Exception):
    """No valid session: the page answers with the sign-in page and this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def check(request: Request, token: str, tenant: str | None = None) -> Caller:
    """The caller a token names (a 401 or 429 of the API as its NcloudError)."""
    if not token.strip() or len(token) > MAX_TOKEN:
        raise Unauthenticated("that is not an ncloud token")
    return identify_header(
        f"Bearer {token.strip()}", _address(request), tenant, store(), failed_auth()
    )


def signed_in(request: Request) -> Caller:
    """The dashboard's caller, from its cookies; SignedOut when there is none that is valid."""
    token = request.cookies.get(SESSION)
    if not token:
        raise SignedOut("")
    try:
        found = check(request, token)
    except Unauthenticated:
        raise SignedOut("you were signed out: your session is no longer valid") from None
    except NcloudError as e:
        raise SignedOut(e.message) from None
    wanted = request.cookies.get(TENANT)
    mine = found.user.tenants
    tenant = wanted if wanted in mine or (wanted and found.user.is_admin) else None
    if tenant is None and mine:
        tenant = mine[0]
    setattr(request.state, USER_KEY, found.user.email)  # for the audit log (serve.audit)
    setattr(request.state, TENANT_KEY, tenant)
    return Caller(found.user, tenant)


def same_origin(request: Request) -> None:
    """A form that changes state must be posted by a page of this server (CSRF)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return  # SameSite=Strict already kept other sites' requests from carrying the cookie
    if urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Forbidden("this form was posted from another site")


def sign_in_page(message: str = "") -> RedirectResponse:
    suffix = f"?message={quote(message)}" if message else ""
    out = RedirectResponse(f"{BASE}/login{suffix}", status_code=303)
    out.delete_cookie(SESSION, path=BASE)
    return out


def start(token: str, to: str = f"{BASE}/models") -> RedirectResponse:
    out = RedirectResponse(to, status_code=303)
    out.set_cookie(
        SESSION, token, httponly=True, samesite="strict", path=BASE, max_age=7 * 24 * 3600
    )
    return out
