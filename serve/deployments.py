"""A deployed model on Ray Serve: one application per model at /models/<id>, batched forwards.

Each replica loads the run's weights and meta.json once (serving what training saw: the
eval transform, the class names), authenticates every request (a token of the model's
tenant, or the deployment's own token), decodes the inputs, and sends each one through a
`@serve.batch` forward shared by all concurrent requests. More requests than the replica
should queue are answered 503 with Retry-After rather than left to time out.
"""

import asyncio
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.datastructures import UploadFile

from cluster import accounts
from cluster.store import open_store
from jobs import deployments, models
from jobs.predictor import DEFAULT_K, Predictor
from ncloud.errors import InvalidInput, NotFound, Unauthenticated, Unavailable
from serve.errors import install_error_handlers
from serve.limits import BodySizeLimit

# No `from __future__ import annotations` here: FastAPI must see the real `Request` class on
# the methods of a class-based Serve ingress to inject it.
log = logging.getLogger("ncloud.deployment")


@dataclass(frozen=True)
class ServeConfig:
    model_id: int
    tenant: str
    db_url: str
    checkpoint: int | None
    gpus: int
    max_batch: int = 32
    batch_wait_s: float = 0.005
    max_queue: int = 256  # inputs waiting in one replica before new requests get 503
    max_body: int = 1 << 20
    max_file: int = 64 << 20


def _authorize(store: Any, cfg: ServeConfig, request: Request) -> None:
    """The model's tenant's user (or an admin), or this deployment's token; else 401/404."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not header or scheme.lower() != "bearer" or not token:
        raise Unauthenticated("send 'Authorization: Bearer <token>' (a tenant or deployment token)")
    if token.startswith("ncd_"):
        deployments.check_token(store, cfg.model_id, token)
        return
    user = accounts.authenticate(store, token)
    if cfg.tenant not in user.tenants and not user.is_admin:
        raise NotFound(f"no model {cfg.model_id}")


def _app(cfg: ServeConfig) -> FastAPI:
    app = FastAPI(title=f"ncloud model {cfg.model_id}", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_body=cfg.max_file, max_file=cfg.max_file)
    return app


def model_application(cfg: ServeConfig, replicas: int, env: dict[str, str]) -> Any:
    app = _app(cfg)

    @serve.deployment(
        name="model",
        num_replicas=replicas,
        # The tenant's reservation already holds the CPUs; the replica takes none on top.
        ray_actor_options={"num_cpus": 0, "num_gpus": cfg.gpus, "runtime_env": {"env_vars": env}},
        max_ongoing_requests=cfg.max_queue,
        health_check_period_s=5,
        health_check_timeout_s=30,
    )
    @serve.ingress(app)
    class ModelServer:
        def __init__(self, config: dict[str, Any]) -> None:
            self.cfg = ServeConfig(**config)
            self.store = open_store(self.cfg.db_url)
            model = models.get(self.store, self.cfg.tenant, self.cfg.model_id)
            device = "cuda" if self.cfg.gpus and torch.cuda.is_available() else "cpu"
            torch.set_num_threads(1)
            self.predictor = Predictor(
                model.url, model.spec_name, model.spec_text, self.cfg.checkpoint, device
            )
            self._forward.set_max_batch_size(self.cfg.max_batch)  # type: ignore[attr-defined]
            self._forward.set_batch_wait_timeout_s(self.cfg.batch_wait_s)  # type: ignore[attr-defined]
            self.waiting = 0
            log.info("model %s serving on %s", self.cfg.model_id, device)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def _forward(self, inputs: list[Any]) -> list[torch.Tensor]:
            return list(self.predictor.probabilities(inputs))

        def check_health(self) -> None:
            """Serve restarts a replica whose network no longer answers a zero input."""
            self.predictor.probe()

        @app.get("/")
        def info(self, request: Request) -> dict[str, Any]:
            _authorize(self.store, self.cfg, request)
            p = self.predictor
            return {
                "model": self.cfg.model_id,
                "kind": p.kind,
                "classes": p.classes,
                "num_classes": p.num_classes,
                "input_shape": list(p.input_shape),
                "checkpoint": p.checkpoint,
                "device": str(p.device),
            }

        @app.post("/predict")
        async def predict(self, request: Request, k: int = DEFAULT_K, raw: bool = False) -> Any:
            await asyncio.to_thread(_authorize, self.store, self.cfg, request)
            k = self.predictor.clamp_k(k)
            named = await _inputs(request)
            if self.waiting + len(named) > self.cfg.max_queue:
                busy = Unavailable("this deployment is busy: retry in a second")
                return JSONResponse(busy.to_body(), status_code=503, headers={"Retry-After": "1"})
            decoded = [self.predictor.decode(name, data) for name, data in named]
            alone = self.waiting == 0
            self.waiting += len(decoded)
            try:
                if alone:  # nothing to batch with: no batch wait, one forward for this request
                    probs = list(self.predictor.probabilities(decoded))
                else:
                    probs = await asyncio.gather(*[self._forward(x) for x in decoded])
            finally:
                self.waiting -= len(decoded)
            if raw:
                return {
                    "predictions": [
                        {"input": n, "output": p.tolist(), "shape": list(p.shape)}
                        for (n, _), p in zip(named, probs, strict=True)
                    ]
                }
            tops = self.predictor.top_k(torch.stack(probs), k)
            return {
                "model": self.cfg.model_id,
                "k": k,
                "predictions": [
                    {"input": n, "top": top} for (n, _), top in zip(named, tops, strict=True)
                ],
            }

    return ModelServer.bind(asdict(cfg))  # type: ignore[attr-defined]


async def _inputs(request: Request) -> list[tuple[str, bytes]]:
    """(name, bytes) of every input: multipart files, or one raw body (a file or JSON)."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        found = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                found.append((value.filename or key, await value.read()))
        if not found:
            raise InvalidInput("no files in the request: send -F file=@input.jpg")
        return found
    body = await request.body()
    if not body:
        raise InvalidInput("the request is empty: send -F file=@input.jpg")
    name = "input.json" if "json" in kind else request.query_params.get("name", "input")
    return [(name, body)]
