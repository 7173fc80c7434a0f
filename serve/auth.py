"""Who is calling and in which tenant: bearer token -> user, X-Ncloud-Tenant -> tenant."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from cluster.core import accounts, tokens
from cluster.core.store import Store
from ncloud.errors import Forbidden, InvalidInput, Unauthenticated
from ncloud.protocol import TENANT_HEADER
from serve.throttle import FailedAuth


@dataclass(frozen=True)
class Caller:
    user: accounts.User
    tenant: str | None

    def require_admin(self) -> None:
        if not self.user.is_admin:
            raise Forbidden("this needs an admin token")

    def require_tenant(self) -> str:
        """The tenant this request acts in; the caller must belong to it (admins may act in any)."""
        if self.tenant is None:
            mine = self.user.tenants
            if len(mine) == 1:
                return mine[0]
            raise InvalidInput(
                "pick a tenant: --tenant NAME, NCLOUD_TENANT or `ncloud configure` "
                f"(yours: {', '.join(mine) or 'none'})"
            )
        if self.tenant not in self.user.tenants and not self.user.is_admin:
            raise Forbidden(f"you are not a member of tenant {self.tenant!r}")
        return self.tenant


def identify(request: Request, store: Store, guard: FailedAuth) -> Caller:
    """The caller of a request; 401 for a bad token, 429 after too many (serve.throttle)."""
    address = request.client.host if request.client else None
    header = request.headers.get("authorization", "")
    return identify_header(header, address, request.headers.get(TENANT_HEADER), store, guard)


def identify_header(
    header: str, address: str | None, tenant: str | None, store: Store, guard: FailedAuth
) -> Caller:
    """The caller behind an Authorization header's value (the dashboard's cookie makes one)."""

    def authenticate() -> accounts.User:
        scheme, _, token = header.partition(" ")
        if not header:
            raise Unauthenticated(
                "no token: send 'Authorization: Bearer <token>' (ncloud configure)"
            )
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        return tokens.authenticate(store, token.strip())

    user = guard.check(address, header, authenticate)
    return Caller(user, tenant or None)
