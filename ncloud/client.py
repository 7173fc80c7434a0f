"""A typed HTTP client for the ncloud REST API; the CLI uses it and so can users.

    from ncloud.client import Client
    c = Client("http://127.0.0.1:8000", token="nc_...", tenant="vision")
    c.tenants.list()

Every failure raises a class from ncloud.errors, the same one the server raised.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from ncloud.client_batches import Batches
from ncloud.client_datasets import Datasets
from ncloud.client_models import Models
from ncloud.client_volumes import Volumes
from ncloud.config import api_url
from ncloud.errors import ServerUnreachable, error_from_body

TENANT_HEADER = "X-Ncloud-Tenant"
JSON = Any


class Client:
    def __init__(
        self,
        host: str,
        token: str | None = None,
        tenant: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = api_url(host)
        headers = {"User-Agent": "ncloud-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if tenant:
            headers[TENANT_HEADER] = tenant
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self.tenants = Tenants(self)
        self.users = Users(self)
        self.tokens = Tokens(self)
        self.resources = ResourcesAPI(self)
        self.datasets = Datasets(self)
        self.volumes = Volumes(self)
        self.models = Models(self)
        self.batches = Batches(self)

    def request(
        self,
        method: str,
        path: str,
        json: JSON = None,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
    ) -> JSON:
        headers = {"Content-Type": "application/octet-stream"} if content is not None else None
        try:
            response = self._http.request(
                method, path, json=json, params=params, content=content, headers=headers
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            host = self.base_url.removesuffix("/api/v1")
            raise ServerUnreachable(
                f"cannot reach ncloud at {host}: is it running? (ncloud server start)"
            ) from exc
        return self._parse(response)

    def _parse(self, response: httpx.Response) -> JSON:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise error_from_body(response.status_code, body)
        return body

    def put_file(self, path: str, chunks: Iterator[bytes], size: int) -> JSON:
        """Stream one file's bytes to a PUT route (bounded memory on both sides)."""
        try:
            response = self._http.put(
                path,
                content=chunks,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(
                f"cannot reach ncloud at {self.base_url}: is it running? (ncloud server start)"
            ) from exc
        return self._parse(response)

    def stream_download(self, path: str, dest: Path) -> int:
        """GET a file route into dest, chunk by chunk; returns the bytes written."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with self._http.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                self._parse(response)
            with open(dest, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    written += len(chunk)
        return written

    def predict(
        self, model_id: int, files: Sequence[tuple[str, bytes]], k: int = 5, raw: bool = False
    ) -> JSON:
        """POST files to the model's deployment route (outside /api/v1)."""
        url = f"{str(self.base_url).removesuffix('/api/v1').rstrip('/')}/models/{model_id}/predict"
        parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
        try:
            response = self._http.post(
                url,
                params={"k": k, "raw": raw},
                files=parts or None,
                content=None if parts else b"",
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(f"cannot reach the deployment at {url}") from exc
        return self._parse(response)

    def health(self) -> JSON:
        return self.request("GET", "/health")

    def info(self) -> JSON:
        return self.request("GET", "/info")

    def close(self) -> None:
        self._http.close()


class Tenants:
    def __init__(self, client: Client) -> None:
        self._c = client

    def add(self, name: str, cpus: float, gpus: float = 0, memory: int | str = 0) -> JSON:
        return self._c.request(
            "POST", "/tenants", json={"name": name, "cpus": cpus, "gpus": gpus, "memory": memory}
        )

    def list(self) -> JSON:
        return self._c.request("GET", "/tenants")

    def show(self, name: str) -> JSON:
        return self._c.request("GET", f"/tenants/{name}")

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
    def __init__(self, client: Client) -> None:
        self._c = client

    def add(self, email: str, tenants: list[str], admin: bool = False) -> JSON:
        return self._c.request(
            "POST", "/users", json={"email": email, "tenants": tenants, "admin": admin}
        )

    def list(self, tenant: str | None = None) -> JSON:
        return self._c.request("GET", "/users", params={"tenant": tenant} if tenant else None)

    def show(self, email: str) -> JSON:
        return self._c.request("GET", f"/users/{email}")

    def modify(
        self,
        email: str,
        add_tenants: Sequence[str] | None = None,
        remove_tenants: Sequence[str] | None = None,
        admin: bool | None = None,
    ) -> JSON:
        return self._c.request(
            "PATCH",
            f"/users/{email}",
            json={
                "add_tenants": list(add_tenants or []),
                "remove_tenants": list(remove_tenants or []),
                "admin": admin,
            },
        )

    def remove(self, email: str) -> JSON:
        return self._c.request("DELETE", f"/users/{email}")


class Tokens:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, name: str = "cli") -> JSON:
        return self._c.request("POST", "/tokens", json={"name": name})

    def list(self) -> JSON:
        return self._c.request("GET", "/tokens")

    def revoke(self, token_id: str) -> JSON:
        return self._c.request("DELETE", f"/tokens/{token_id}")


class ResourcesAPI:
    def __init__(self, client: Client) -> None:
        self._c = client

    def list(self) -> JSON:
        return self._c.request("GET", "/resources")
