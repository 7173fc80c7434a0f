"""A deployed model on Ray Serve: one application per model at /models/<id>, batched forwards.

Each replica loads the run's weights and meta.json once (serving what training saw: the
eval transform, the class names), authenticates every request (a token of the model's
tenant, or the deployment's own token), decodes the inputs, and sends each one through a
`@serve.batch` forward shared by all concurrent requests. More requests than the replica
should queue are answered 503 with Retry-After rather than left to time out.
"""

import asyncio
import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.datastructures import UploadFile

from cluster import accounts
from cluster.store import open_store
from jobs import deployments, models
from jobs.predictor import DEFAULT_K, Predictor
from ncloud.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
)
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
    auth_ttl_s: float = 1.0  # a revoked token stops working within this long


class AuthCache:
    """Authorization headers that passed the check in the last `ttl_s` seconds.

    Checking a token is a database read; under load every request would pay for one. Only
    successes are kept (as hashes), so a bad token is refused on every request, and a revoked
    one is refused at most `ttl_s` after the revocation.
    """

    def __init__(self, ttl_s: float, size: int = 1024) -> None:
        self.ttl_s, self.size = ttl_s, size
        self._until: dict[bytes, float] = {}

    @staticmethod
    def _key(header: str) -> bytes:
        return hashlib.sha256(header.encode()).digest()

    def fresh(self, header: str) -> bool:
        until = self._until.get(self._key(header))
        return until is not None and time.monotonic() < until

    def remember(self, header: str) -> None:
        if len(self._until) >= self.size:
            now = time.monotonic()
            self._until = {k: t for k, t in self._until.items() if t > now}
            if len(self._until) >= self.size:
                self._until.clear()
        self._until[self._key(header)] = time.monotonic() + self.ttl_s


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
        # Past that, the proxy holds as many more, then answers 503 too instead of queueing on.
        max_queued_requests=cfg.max_queue,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
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
            self.waiting = 0  # decoded inputs not yet answered
            self.active = 0  # requests in the handler
            self.auth = AuthCache(self.cfg.auth_ttl_s)
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
            self.active += 1  # counted from arrival: a request still reading its body counts
            try:
                return await self._predict(request, k, raw)
            finally:
                self.active -= 1

        async def _predict(self, request: Request, k: int, raw: bool) -> Any:
            header = request.headers.get("authorization", "")
            if not self.auth.fresh(header):
                await asyncio.to_thread(_authorize, self.store, self.cfg, request)
                self.auth.remember(header)
            k = self.predictor.clamp_k(k)
            named = await _inputs(request)
            if len(named) > self.cfg.max_queue:
                raise PayloadTooLarge(
                    f"{len(named)} inputs in one request; this deployment takes at most "
                    f"{self.cfg.max_queue} (its --max-queue)"
                )
            if self.waiting + len(named) > self.cfg.max_queue:
                busy = Unavailable("this deployment is busy: retry in a second")
                return JSONResponse(busy.to_body(), status_code=503, headers={"Retry-After": "1"})
            decoded = [self.predictor.decode(name, data) for name, data in named]
            self.waiting += len(decoded)
            try:
                if self.active == 1:  # nothing to batch with: one forward now, no batch wait
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
