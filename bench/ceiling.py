"""The serving ceiling of bench/serve.py: the same net in plain Starlette on uvicorn, no Ray.

`uvicorn --factory bench.ceiling:app --workers 2` with BENCH_CEILING_DIR naming a folder
that holds the spec (cnn.yaml), meta.json and model.pt: the same decode, forward (batch 1,
one thread per worker) and top-k as the plain Serve peers, with nothing of ours or Serve's
in the way. What the machine can serve over HTTP with this network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

FOLDER_ENV = "BENCH_CEILING_DIR"


def app() -> Starlette:
    from bench.serve import SPEC, PlainNet

    folder = Path(os.environ[FOLDER_ENV])
    meta = json.loads((folder / "meta.json").read_text())
    net = PlainNet((folder / SPEC.name).read_text(), meta, (folder / "model.pt").read_bytes())

    async def predict(request: Request) -> JSONResponse:
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"code": "invalid_input", "message": "no file"}, 422)
        data = await upload.read()
        k = int(request.query_params.get("k", 5))
        top: list[Any] = net.top(net.probabilities(net.decode(data)), k)[0]
        return JSONResponse({"predictions": [{"input": upload.filename, "top": top}]})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])
