"""A GPU deployment takes its GPU from the tenant's reservation, and gives it back."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import torch

from ncloud.errors import InvalidInput
from tests.integration.conftest import Server, wait_for
from tests.integration.serving import deployed, features_manifest, post, predict_url, trained


def test_a_gpu_deployment_takes_its_gpu_from_the_tenants_reservation(
    server: Server, tenant: Any
) -> None:
    """The cluster's one GPU is the tenant's: the replica must take it from the reservation
    (no GPU is left outside it), and training gets the bundle's GPU back after undeploy."""
    tenant("gpu", cpus=1, gpus=1, memory="1GiB")
    admin = server.client()
    user = admin.users.add("gus@example.com", ["gpu"])
    client = server.client(token=user["token"], tenant="gpu")
    try:
        ds = client.datasets.create("features", features_manifest(200), "f.tsv")["id"]
        client.datasets.ingest(ds)
        wait_for(lambda: client.datasets.show(ds)["status"] == "Ready", 120, "features")
        mlp = trained(client, "mlp", "features.yaml", ds, epochs=1)  # its worker holds the GPU
        with pytest.raises(InvalidInput, match="one replica"):
            client.models.deploy(mlp, replicas=2, gpus=1)
        dep = deployed(client, mlp, gpus=1)
        assert dep["gpus"] == 1
        info = httpx.get(
            predict_url(server, mlp).removesuffix("predict"),
            headers={"Authorization": f"Bearer {dep['token']}"},
            timeout=30,
        ).json()
        assert len(info["gpu_ids"]) == 1, info  # the one GPU (an index, or a UUID)
        assert info["device"].startswith("cuda" if torch.cuda.is_available() else "cpu"), info
        x = json.dumps([0.0] * 64)
        assert post(server, mlp, dep["token"], files=[("file", ("x.json", x))]).status_code == 200
        assert client.resources.list()["in_use"]["gpus"] == 1  # the replica's, counted once
        client.models.undeploy(mlp)
        wait_for(lambda: client.models.deployment(mlp)["status"] == "Undeployed", 120, "Undeployed")
        trained(client, "again", "features.yaml", ds, epochs=1)  # a new worker, the same GPU
        assert client.resources.list()["in_use"]["gpus"] == 0  # its idle worker is not in use
    finally:
        admin.users.remove("gus@example.com")
