"""The client's admin and account calls: tenants, users, tokens, the cluster's resources."""

from __future__ import annotations

from collections.abc import Sequence

from ncloud import responses
from ncloud.client.transport import JSON, Transport


class Tenants:
    def __init__(self, client: Transport) -> None:
        self._c = client

    def add(self, name: str, cpus: float, gpus: float = 0, memory: int | str = 0) -> JSON:
        return self._c.request(
            "POST", "/tenants", json={"name": name, "cpus": cpus, "gpus": gpus, "memory": memory}
        )

    def list(self) -> list[responses.Tenant]:
        return self._c.call(list[responses.Tenant], "GET", "/tenants")

    def show(self, name: str) -> responses.TenantDetail:
        return self._c.call(responses.TenantDetail, "GET", f"/tenants/{name}")

    def modify(
        self,
        name: str,
        cpus: float | None = None,
        gpus: float | None = None,
        memory: int | str | None = None,
    ) -> JSON:
        body = {
            k: v for k, v in (("cpus", cpus), ("gpus", gpus), ("memory", memory)) if v is not None
        }
        return self._c.request("PATCH", f"/tenants/{name}", json=body)

    def remove(self, name: str, force: bool = False) -> JSON:
        return self._c.request("DELETE", f"/tenants/{name}", params={"force": force})


class Users:
    def __init__(self, client: Transport) -> None:
        self._c = client

    def add(self, email: str, tenants: list[str], admin: bool = False) -> responses.NewUser:
        return self._c.call(
            responses.NewUser,
            "POST",
            "/users",
            json={"email": email, "tenants": tenants, "admin": admin},
        )

    def list(self, tenant: str | None = None) -> list[responses.User]:
        return self._c.call(
            list[responses.User], "GET", "/users", params={"tenant": tenant} if tenant else None
        )

    def show(self, email: str) -> responses.User:
        return self._c.call(responses.User, "GET", f"/users/{email}")

    def modify(
        self,
        email: str,
        add_tenants: Sequence[str] | None = None,
        remove_tenants: Sequence[str] | None = None,
        admin: bool | None = None,
    ) -> responses.User:
        return self._c.call(
            responses.User,
            "PATCH",
            f"/users/{email}",
            json={
                "add_tenants": list(add_tenants or []),
                "remove_tenants": list(remove_tenants or []),
                "admin": admin,
            },
        )

    def remove(self, email: str) -> responses.User:
        return self._c.call(responses.User, "DELETE", f"/users/{email}")


class Tokens:
    def __init__(self, client: Transport) -> None:
        self._c = client

    def create(self, name: str = "cli", user: str | None = None) -> responses.NewToken:
        """A token for yourself, or (admins) for `user`."""
        body: JSON = {"name": name} if user is None else {"name": name, "user": user}
        return self._c.call(responses.NewToken, "POST", "/tokens", json=body)

    def list(self) -> list[responses.Token]:
        return self._c.call(list[responses.Token], "GET", "/tokens")

    def revoke(self, token_id: str) -> JSON:
        return self._c.request("DELETE", f"/tokens/{token_id}")


class Audit:
    def __init__(self, client: Transport) -> None:
        self._c = client

    def list(
        self,
        user: str | None = None,
        tenant: str | None = None,
        since: str | None = None,
        limit: int = 1000,
    ) -> list[responses.AuditEntry]:
        """Admins: state-changing calls, oldest first; since: an ISO date or time."""
        params = {"user": user, "tenant": tenant, "since": since, "limit": limit}
        return self._c.call(
            list[responses.AuditEntry],
            "GET",
            "/audit",
            params={k: v for k, v in params.items() if v is not None},
        )


class ResourcesAPI:
    def __init__(self, client: Transport) -> None:
        self._c = client

    def list(self) -> JSON:
        return self._c.request("GET", "/resources")

    def usage(self, tenant: str | None = None, since: str | None = None) -> responses.Usage:
        """Hours held per run and deployment (admins naming no tenant: every tenant's)."""
        params = {k: v for k, v in {"tenant": tenant, "since": since}.items() if v is not None}
        return self._c.call(responses.Usage, "GET", "/usage", params=params)
