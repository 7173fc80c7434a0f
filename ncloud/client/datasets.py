"""The client's dataset calls (Client.datasets)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from ncloud import responses
from ncloud.client.transport import Transport


class Datasets:
    def __init__(self, client: Transport) -> None:
        self._c = client

    def create(
        self, name: str, manifest: bytes, manifest_name: str = "manifest.tsv"
    ) -> responses.NewDataset:
        """Register an upload (or resume one); returns the files still needed and present."""
        return self._c.call(
            responses.NewDataset,
            "POST",
            "/datasets",
            content=manifest,
            params={"name": name, "manifest_name": manifest_name},
        )

    def link(self, name: str, url: str) -> responses.Dataset:
        return self._c.call(
            responses.Dataset, "POST", "/datasets/link", json={"name": name, "url": url}
        )

    def list(self) -> list[responses.Dataset]:
        return self._c.call(list[responses.Dataset], "GET", "/datasets")

    def show(self, dataset_id: int) -> responses.Dataset:
        return self._c.call(responses.Dataset, "GET", f"/datasets/{dataset_id}")

    def remove(self, dataset_id: int) -> responses.Dataset:
        return self._c.call(responses.Dataset, "DELETE", f"/datasets/{dataset_id}")

    def files(self, dataset_id: int) -> Any:
        return self._c.request("GET", f"/datasets/{dataset_id}/files")

    def put_file(self, dataset_id: int, name: str, chunks: Iterator[bytes], size: int) -> Any:
        return self._c.put_file(f"/datasets/{dataset_id}/files/{quote(name)}", chunks, size)

    def put_files(self, dataset_id: int, archive: bytes) -> responses.Stored:
        """Many files at once, as an uncompressed tar (ncloud.uploads.pack makes one)."""
        return cast(
            responses.Stored, self._c.post_archive(f"/datasets/{dataset_id}/files", archive)
        )

    def ingest(self, dataset_id: int) -> responses.Dataset:
        return self._c.call(responses.Dataset, "POST", f"/datasets/{dataset_id}/ingest")

    def download_file(self, dataset_id: int, name: str, dest: Path) -> int:
        return self._c.stream_download(f"/datasets/{dataset_id}/files/{quote(name)}", dest)
