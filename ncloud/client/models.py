"""The client's model calls (Client.models): train, list, show, logs, stop, resume, results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ncloud import responses
from ncloud.bodies import TrainRequest
from ncloud.client.transport import Transport


class Models:
    def __init__(self, client: Transport) -> None:
        self._c = client

    def train(
        self, name: str, spec_name: str, spec_text: str, train_dataset: int, **options: Any
    ) -> responses.Model:
        """Queue a training run; `options` are TrainRequest's fields (ncloud.bodies), None for
        the server's default."""
        unknown = sorted(set(options) - set(TrainRequest.model_fields))
        if unknown:
            raise TypeError(f"train() got unknown options: {', '.join(unknown)}")
        body = {
            "name": name,
            "spec_name": spec_name,
            "spec_text": spec_text,
            "train_dataset": train_dataset,
            **{k: v for k, v in options.items() if v is not None},
        }
        return self._c.call(responses.Model, "POST", "/models", json=body)

    def list(self, status: str | None = None) -> list[responses.Model]:
        return self._c.call(
            list[responses.Model], "GET", "/models", params={"status": status} if status else None
        )

    def show(self, model_id: int) -> responses.ModelDetail:
        return self._c.call(responses.ModelDetail, "GET", f"/models/{model_id}")

    def logs(self, model_id: int, after: int = 0) -> responses.Logs:
        return self._c.call(
            responses.Logs, "GET", f"/models/{model_id}/logs", params={"after": after}
        )

    def stop(self, model_id: int, wait: bool = True) -> responses.Model:
        return self._c.call(
            responses.Model, "POST", f"/models/{model_id}/stop", params={"wait": wait}
        )

    def resume(
        self, model_id: int, epochs: int | None = None, checkpoint: int | None = None
    ) -> responses.Model:
        return self._c.call(
            responses.Model,
            "POST",
            f"/models/{model_id}/resume",
            json={"epochs": epochs, "checkpoint": checkpoint},
        )

    def remove(self, model_id: int) -> responses.Removed:
        return self._c.call(responses.Removed, "DELETE", f"/models/{model_id}")

    def results(self, model_id: int) -> Any:
        return self._c.request("GET", f"/models/{model_id}/results")

    def download_result(self, model_id: int, name: str, dest: Path) -> int:
        return self._c.stream_download(f"/models/{model_id}/results/{quote(name)}", dest)

    def deploy(
        self,
        model_id: int,
        replicas: int = 1,
        gpus: int = 0,
        checkpoint: int | None = None,
        **batching: Any,
    ) -> responses.Deployment:
        """Deploy; `batching` takes max_batch, batch_wait_ms, max_queue (server defaults) and
        volumes ([{"id", "path"}], read-only)."""
        body = {"replicas": replicas, "gpus": gpus, "checkpoint": checkpoint, **batching}
        return self._c.call(responses.Deployment, "POST", f"/models/{model_id}/deploy", json=body)

    def undeploy(self, model_id: int) -> responses.Deployment:
        return self._c.call(responses.Deployment, "POST", f"/models/{model_id}/undeploy")

    def deployment(self, model_id: int) -> responses.Deployment:
        return self._c.call(responses.Deployment, "GET", f"/models/{model_id}/deployment")

    def revoke_deployment_token(self, model_id: int) -> Any:
        return self._c.request("DELETE", f"/models/{model_id}/deployment/token")

    def predict(
        self, model_id: int, files: Sequence[tuple[str, bytes]], k: int = 5, raw: bool = False
    ) -> Any:
        """Top-k predictions for each file, from the model's deployment (/models/ID/predict)."""
        return self._c.predict(model_id, files, k, raw)
