"""The client's one way to the server: an httpx session, every failure mapped to ncloud.errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar, cast

import httpx

from ncloud.config import api_url
from ncloud.errors import ServerUnreachable, error_from_body
from ncloud.protocol import ARCHIVE_TYPE, DEPLOYMENT_PREFIX, TENANT_HEADER, host_of

JSON = Any
T = TypeVar("T")


class Transport:
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

    def close(self) -> None:
        """Close the pooled connections (a Client is also a context manager)."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

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
            raise self._unreachable() from exc
        return self._parse(response)

    def _unreachable(self, why: str = "is it running?") -> ServerUnreachable:
        return ServerUnreachable(
            f"cannot reach ncloud at {host_of(self.base_url)}: {why} (ncloud server start)"
        )

    def call(self, answer: type[T], method: str, path: str, **kw: Any) -> T:
        """`request`, its answer typed as one of ncloud.responses (which the server validates
        each answer against)."""
        return cast(T, self.request(method, path, **kw))

    def _parse(self, response: httpx.Response) -> JSON:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code == 404 and not isinstance(body, dict):
            # Not our API's 404 (that one says {code, message}): Ray Serve's own, for a
            # route nobody serves. Its proxy outlives a stopped control plane (the
            # tenants' deployments keep answering), so this is how a stopped server looks.
            raise self._unreachable("something answers there, but not ncloud's API: stopped?")
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
            raise self._unreachable() from exc
        return self._parse(response)

    def post_archive(self, path: str, body: bytes) -> JSON:
        """POST an uncompressed tar of many files to a files route."""
        try:
            response = self._http.post(path, content=body, headers={"Content-Type": ARCHIVE_TYPE})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable() from exc
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
        """POST files to the model's deployment route (outside the API prefix)."""
        url = f"{host_of(self.base_url)}{DEPLOYMENT_PREFIX}/{model_id}/predict"
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
