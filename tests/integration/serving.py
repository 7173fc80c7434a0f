"""What the deployment tests share: trained and deployed models, and posts to their routes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from ncloud.client import Client
from tests.integration.conftest import Server, wait_for

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"Completed", "Failed", "Stopped"}


def features_manifest(rows: int = 400) -> bytes:
    """sklearn's digits as 64 inline @ASCII_FLOAT columns and an @ASCII_INT label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    lines = ["\t".join(["@ASCII_FLOAT"] * 64 + ["@ASCII_INT"])]
    for x, y in zip(digits.data[:rows], digits.target[:rows], strict=True):
        lines.append("\t".join([f"{v / 16:.3f}" for v in x] + [str(int(y))]))
    return ("\n".join(lines) + "\n").encode()


FEATURES_MLP = """
epochs: 3
layers:
  - {type: Linear, config: {out_features: 64}}
  - {type: ReLU}
  - {type: Linear, config: {out_features: num_classes}}
"""


def trained(client: Client, name: str, spec: str, dataset: int, epochs: int) -> int:
    text = FEATURES_MLP if spec == "features.yaml" else (ROOT / "examples" / spec).read_text()
    model = client.models.train(name, spec, text, dataset, epochs=epochs)
    found = wait_for(
        lambda: (m := client.models.show(model["id"]))["status"] in TERMINAL and m,
        300,
        f"{name} to train",
    )
    assert found["status"] == "Completed", found["error"]
    return int(model["id"])


def deployed(client: Client, model_id: int, **options: Any) -> dict[str, Any]:
    found = client.models.deploy(model_id, **options)
    token = found["token"]
    wait_for(lambda: client.models.deployment(model_id)["status"] == "Deployed", 300, "Deployed")
    return {**client.models.deployment(model_id), "token": token}


def predict_url(server: Server, model_id: int) -> str:
    return f"{server.api_url.removesuffix('/api/v1')}/models/{model_id}/predict"


def post(
    server: Server,
    model_id: int,
    token: str | None,
    files: Any = None,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> Any:
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    sent.update(headers or {})
    return httpx.post(predict_url(server, model_id), headers=sent, files=files, timeout=60, **kw)


def png_image(width: int, height: int, color: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), color).save(out, "PNG")
    return out.getvalue()
