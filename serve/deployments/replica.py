"""A deployed model on Ray Serve: one application per model at /models/<id>, batched forwards.

Each replica loads the run's weights and meta.json once (serving what training saw: the
eval transform, the class names), authenticates every request (a token of the model's
tenant, or the deployment's own token), decodes the inputs, and sends each one through a
`@serve.batch` forward shared by all concurrent requests; a request that finds the replica
idle skips the batch wait. More inputs than the replica should hold are answered 503 with
Retry-After rather than left to time out.

The replica answers its two routes (GET / and POST /predict) itself, on plain Starlette
requests: a FastAPI ingress cost a router, parameter validation and a JSON encoder on
every request, which showed in throughput under load.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
import torch
from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cluster.core import accounts
from cluster.core.store import open_store
from jobs.models import deployments
from jobs.models import state as models
from jobs.models.predictor import Predictor
from jobs.volumes import sync as volume_sync
from ncloud.errors import NcloudError, NotFound, PayloadTooLarge, Unavailable
from ncloud.settings import settings
from serve import limits
from serve.deployments.admission import Drain
from serve.deployments.requests import authorize, query, read_inputs, relative_path
from serve.errors import error_response
from serve.throttle import AuthCache, FailedAuth

log = logging.getLogger("ncloud.deployment")
MAX_BODY = 64 << 20  # a request's files together
AUTH_TTL_S = 1.0  # a revoked token stops working within this long
PROXY_QUEUE_FLOOR = 64  # requests the proxy may hold for one deployment, at the least
MAX_ONGOING_FLOOR = 2048  # requests Serve lets into one replica, at the least


class MethodNotAllowed(NcloudError):
    code, http_status = "method_not_allowed", 405


@dataclass(frozen=True)
class ServeConfig:
    model_id: int
    tenant: str
    db_url: str
    checkpoint: int | None
    gpus: int
    max_batch: int
    batch_wait_s: float
    max_queue: int  # inputs waiting in one replica before new requests get 503
    volumes: list[dict[str, Any]] = field(default_factory=list)  # read-only in the sandbox


def model_application(
    cfg: ServeConfig, replicas: int, env: dict[str, str], gpus: dict[str, float] | None = None
) -> Any:
    """`gpus`: the Ray resources of the replica's GPUs in the tenant's reservation
    (cluster.core.reservations.gpu_resources); None for a CPU deployment."""
    # The tenant's reservation already holds the CPUs; the replica takes none on top.
    actor: dict[str, Any] = {"num_cpus": 0, "runtime_env": {"env_vars": env}}
    if gpus:
        actor["resources"] = gpus

    @serve.deployment(
        name="model",
        num_replicas=replicas,
        ray_actor_options=actor,
        # The replica decides who waits (--max-queue inputs, and no longer than
        # admission.WAIT_BUDGET_S at the rate it has been answering); Serve's own limit is
        # set far above that, so its proxy never sees the replica full. A full replica in
        # Serve's eyes makes the proxy probe it and retry the requests it holds, which
        # under a burst of 1,000 kept some waiting 20 s and more (bench/burst.py). The
        # proxy's queue still holds every request of a burst while it picks a replica
        # (a bound of 3 dropped the 4th of 8 simultaneous requests); past it the proxy
        # answers 503 with Retry-After in its own plain text.
        max_ongoing_requests=max(MAX_ONGOING_FLOOR, 4 * cfg.max_queue),
        # With direct ingress (cluster/control/front.py) Serve counts a request queued in the
        # replica from its arrival to its turn; 64 of them refused the 65th of 128 at once.
        max_queued_requests=max(PROXY_QUEUE_FLOOR, MAX_ONGOING_FLOOR, 4 * cfg.max_queue),
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
        health_check_period_s=5,
        health_check_timeout_s=30,
    )
    class ModelServer:
        def __init__(self, config: dict[str, Any]) -> None:
            self.cfg = ServeConfig(**config)
            self.store = open_store(self.cfg.db_url)
            model = models.get(self.store, self.cfg.tenant, self.cfg.model_id)
            self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]  # from the reservation
            device = "cuda" if self.cfg.gpus and torch.cuda.is_available() else "cpu"
            torch.set_num_threads(1)
            tenant_id = accounts.get_tenant(self.store, self.cfg.tenant).id
            cfg_tenant = self.cfg.tenant
            self.predictor = Predictor(
                model.url,
                model.spec_name,
                model.spec_text,
                self.cfg.checkpoint,
                device,
                tenant_id=tenant_id,
                gpus=tuple(self.gpu_ids),
                mounts=[(int(v["id"]), str(v["path"])) for v in self.cfg.volumes],
                pull=lambda volume, into: volume_sync.pull(self.store, cfg_tenant, volume, into),
            )
            self._forward.set_max_batch_size(self.cfg.max_batch)  # type: ignore[attr-defined]
            self._forward.set_batch_wait_timeout_s(self.cfg.batch_wait_s)  # type: ignore[attr-defined]
            self.waiting = 0  # decoded inputs not yet answered
            self.drain = Drain()
            self.reading = 0  # requests admitted whose bodies are still coming in
            self.active = 0  # requests in the handler
            self.served = 0  # answered 200 since the last check_health wrote them down
            self.auth = AuthCache(AUTH_TTL_S)
            self.checking: dict[tuple[str, str | None], asyncio.Future[str]] = {}
            self.failures = FailedAuth(settings().auth_failures_per_minute)
            log.info("model %s serving on %s (GPUs %s)", self.cfg.model_id, device, self.gpu_ids)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def _forward(self, inputs: list[Any]) -> list[torch.Tensor]:
            return list(await self.predictor.probabilities_async(inputs))

        async def check_health(self) -> None:
            """Serve restarts a replica whose network no longer answers a zero input. Every
            check (5 s) also adds the requests answered since to the deployment's count."""
            await self.predictor.probe_async()
            served, self.served = self.served, 0
            if served:
                await asyncio.to_thread(
                    deployments.add_served, self.store, self.cfg.model_id, served
                )

        async def __call__(self, request: Request) -> Response:
            self.active += 1  # counted from arrival: a request still reading its body counts
            try:
                path = relative_path(request)
                if path == "/predict":
                    if request.method != "POST":
                        raise MethodNotAllowed("POST files to /predict")
                    arrived = time.perf_counter()
                    answer = await self._predict(request)
                    self.served += answer.status_code == 200
                    took = (time.perf_counter() - arrived) * 1e3  # the replica's share of it
                    answer.headers["Server-Timing"] = f"replica;dur={took:.1f}"
                    return answer
                if path == "/":
                    if request.method != "GET":
                        raise MethodNotAllowed("GET / describes the model; POST to /predict")
                    return JSONResponse(await self._info(request))
                raise NotFound(f"no route {path} here: POST files to /predict")
            except Exception as exc:
                return error_response(exc, log)
            finally:
                self.active -= 1

        async def _authorize(self, request: Request) -> None:
            """A header checked in the last AUTH_TTL_S passes; otherwise one check in the
            store per header at a time, which every request with that header waits for (each
            second, all the requests in flight would otherwise each query the store)."""
            header = request.headers.get("authorization", "")
            if self.auth.fresh(header):
                return
            address = request.client.host if request.client else None
            key = (header, address)
            checking = self.checking.get(key)
            if checking is None:
                cfg = self.cfg
                check = functools.partial(authorize, self.store, cfg.tenant, cfg.model_id, request)
                checking = asyncio.ensure_future(
                    asyncio.to_thread(self.failures.check, address, header, check)
                )
                self.checking[key] = checking
                checking.add_done_callback(lambda _: self.checking.pop(key, None))
            await asyncio.shield(checking)
            self.auth.remember(header)

        async def _info(self, request: Request) -> dict[str, Any]:
            await self._authorize(request)
            p = self.predictor
            return {
                "model": self.cfg.model_id,
                "kind": p.kind,
                "classes": p.classes,
                "num_classes": p.num_classes,
                "input_shape": list(p.input_shape),
                "checkpoint": p.checkpoint,
                "device": str(p.device),
                "gpu_ids": self.gpu_ids,
            }

        def _room(self, inputs: int, reading: int = 0) -> bool:
            """Room for `inputs` more: under --max-queue, and answered within the budget at
            the rate the replica has been answering (serve/deployments/admission.py).
            `reading` requests still receiving their bodies count as one input each."""
            held = self.waiting + reading
            within = held + inputs <= self.cfg.max_queue
            return within and self.drain.admits(held, inputs, self.cfg.max_batch)

        def _busy(self) -> Response:
            busy = Unavailable("this deployment is busy: retry in a second")
            return JSONResponse(busy.to_body(), status_code=503, headers={"Retry-After": "1"})

        async def _predict(self, request: Request) -> Response:
            limit = MAX_BODY
            declared = limits.declared_length(request.scope)
            if declared is not None and declared > limit:
                raise limits.too_large(limit)
            await self._authorize(request)
            if not self._room(1, self.reading):  # full: say so before reading the body
                return self._busy()
            k, raw = query(request)
            k = self.predictor.clamp_k(k)
            counted = Request(request.scope, limits.counting(request.receive, limit))
            self.reading += 1  # holds a place while its body comes in
            try:
                named = await read_inputs(counted, self.cfg.max_queue)
            except limits.TooLarge:
                raise limits.too_large(limit) from None
            finally:
                self.reading -= 1
            if len(named) > self.cfg.max_queue:
                raise PayloadTooLarge(
                    f"{len(named)} inputs in one request; this deployment takes at most "
                    f"{self.cfg.max_queue} (its --max-queue)"
                )
            if not self._room(len(named)):
                return self._busy()
            decoded = [self.predictor.decode(name, data) for name, data in named]
            self.waiting += len(decoded)
            try:
                if self.active == 1:  # nothing to batch with: one forward now, no batch wait
                    probs = list(await self.predictor.probabilities_async(decoded))
                elif len(decoded) == 1:
                    probs = [await self._forward(decoded[0])]
                else:
                    probs = await asyncio.gather(*[self._forward(x) for x in decoded])
            finally:
                self.waiting -= len(decoded)
                self.drain.answered(len(decoded), self.waiting)
            if raw:
                outputs = [
                    {"input": n, "output": p.tolist(), "shape": list(p.shape)}
                    for (n, _), p in zip(named, probs, strict=True)
                ]
                return JSONResponse({"predictions": outputs})
            tops = self.predictor.top_k(torch.stack(probs), k)
            found = [{"input": n, "top": top} for (n, _), top in zip(named, tops, strict=True)]
            return JSONResponse({"model": self.cfg.model_id, "k": k, "predictions": found})

    return ModelServer.bind(asdict(cfg))  # type: ignore[attr-defined]
