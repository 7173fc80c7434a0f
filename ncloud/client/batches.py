"""The client's batch prediction calls (Client.batches)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ncloud import responses
from ncloud.client.transport import Transport


class Batches:
    def __init__(self, client: Transport) -> None:
        self._c = client

    def predict_dataset(
        self,
        model_id: int,
        dataset_id: int,
        k: int = 5,
        fmt: str = "csv",
        volumes: list[dict[str, Any]] | None = None,
    ) -> responses.Batch:
        """Predict every row of a dataset; the batch runs at once. volumes: [{"id", "path"}]."""
        body = {"model": model_id, "dataset": dataset_id, "k": k, "format": fmt}
        if volumes:
            body["volumes"] = volumes
        return self._c.call(responses.Batch, "POST", "/batches", json=body)

    def create_upload(
        self,
        model_id: int,
        manifest: bytes,
        name: str = "manifest.tsv",
        k: int = 5,
        fmt: str = "csv",
        volumes: list[str] | None = None,
    ) -> responses.NewBatch:
        """Register a batch over a new manifest; answers with the files it names ("needed").
        volumes: "ID" or "ID:PATH" each."""
        params: dict[str, Any] = {"model": model_id, "name": name, "k": k, "format": fmt}
        if volumes:
            params["volume"] = volumes
        return self._c.call(
            responses.NewBatch, "POST", "/batches/upload", content=manifest, params=params
        )

    def put_file(self, batch_id: int, name: str, chunks: Iterator[bytes], size: int) -> Any:
        return self._c.put_file(f"/batches/{batch_id}/files/{quote(name)}", chunks, size)

    def start(self, batch_id: int) -> responses.Batch:
        """Queue an uploaded batch; files never uploaded become bad rows."""
        return self._c.call(responses.Batch, "POST", f"/batches/{batch_id}/start")

    def list(self) -> list[responses.Batch]:
        return self._c.call(list[responses.Batch], "GET", "/batches")

    def show(self, batch_id: int) -> responses.Batch:
        return self._c.call(responses.Batch, "GET", f"/batches/{batch_id}")

    def download_result(self, batch_id: int, dest: Path) -> int:
        """The result file (CSV or JSONL) of a Completed batch, into dest."""
        return self._c.stream_download(f"/batches/{batch_id}/result", dest)
