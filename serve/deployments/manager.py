"""Deployments' side of the controller: place them in the tenant's bundles, run them on Serve.

Deploy and undeploy answer at once and finish in a background thread (Serve takes
seconds to start replicas); the store says where each one is. On every controller start,
deployments that should be up but have no Serve application are deployed again, so they
come back after `ncloud server stop` / `start`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from cluster.core import accounts, reservations
from cluster.core.names import control_plane_env
from cluster.core.store import Store
from jobs.models import checkpoints, deployments, predictor
from jobs.models import state as models
from jobs.models.deployments import DeploymentStatus
from jobs.sandbox.policy import check_mounts
from jobs.training import queue
from jobs.volumes import state as volumes
from ncloud import responses
from ncloud.errors import Conflict, InvalidInput, QuotaExceeded

log = logging.getLogger("ncloud.serving")
DEPLOY_TIMEOUT_S = 300.0
SERVE_CONTROLLER = "SERVE_CONTROLLER_ACTOR"


class Serving:
    def __init__(
        self,
        store: Store,
        db_url: str,
        bundles_lock: threading.RLock,
        clear_gpu_bundle: Callable[[str, int, int], None],
    ) -> None:
        """`bundles_lock` is the scheduler's: a deploy and an admission never pick the same
        free bundle of a tenant at once (the controller serves several calls at a time).
        `clear_gpu_bundle` is the scheduler's too (see Scheduler.clear_gpu_bundle)."""
        self.store, self.db_url = store, db_url
        self.lock = bundles_lock
        self.clear_gpu_bundle = clear_gpu_bundle
        self.recovered = self._recover()

    def deploy(
        self,
        tenant: str,
        model_id: int,
        replicas: int,
        gpus: int,
        checkpoint: int | None,
        batching: deployments.Batching,
    ) -> responses.Deployment:
        if gpus and replicas > 1:
            raise InvalidInput(
                f"a GPU deployment runs one replica; asked for {replicas}. Serve gives all "
                "replicas the same resources, so each could not be held to its own bundle "
                "of the reservation: deploy with --replicas 1"
            )
        model = models.get(self.store, tenant, model_id)
        check_mounts(batching.mounts())
        for volume_id, _ in batching.mounts():
            volumes.get_volume(self.store, tenant, volume_id)  # another tenant's id: 404
        current = deployments.find(self.store, tenant, model_id)
        if current is not None and current.status.holds_bundles():
            raise Conflict(f"model {model_id} is {current.status.value} already")
        predictor.read_meta(model.url)  # Conflict when it never trained
        if checkpoint is not None:
            found = [int(c["epoch"]) for c in checkpoints.list_checkpoints(model.url)]
            if checkpoint not in found:
                raise Conflict(f"model {model_id} has no checkpoint {checkpoint}; it has {found}")
        else:
            predictor.pinned_checkpoint(model.url)  # Conflict when there are no weights
        with self.lock:
            t = accounts.get_tenant(self.store, tenant)
            bundles = t.bundles
            busy = deployments.bundles_in_use(self.store, tenant)
            chosen = queue.pick(bundles, busy, replicas, gpus)
            if chosen is None:
                free = len(bundles) - len(busy)
                raise QuotaExceeded(
                    f"tenant {tenant!r} has {free} of {len(bundles)} worker slot(s) free; "
                    f"this deployment asks for {replicas} replica(s)"
                    + (f" with {gpus} GPU(s) each" if gpus else "")
                )
            dep, token = deployments.begin(
                self.store, tenant, model_id, replicas, gpus, checkpoint, chosen, batching
            )
        self._start(dep)
        return {**dep.as_json(), "token": token}

    def _start(self, dep: deployments.Deployment) -> None:
        threading.Thread(target=self._run, args=(dep,), daemon=True).start()

    def _run(self, dep: deployments.Deployment) -> None:
        from serve.deployments.replica import ServeConfig, model_application

        try:
            b = dep.batching
            cfg = ServeConfig(
                dep.model_id,
                dep.tenant,
                self.db_url,
                dep.checkpoint,
                dep.gpus,
                max_batch=b.max_batch,
                batch_wait_s=b.batch_wait_ms / 1000,
                max_queue=b.max_queue,
                volumes=[dict(v) for v in b.volumes],
            )
            gpus = self._gpu_resources(dep) if dep.gpus else None
            app = model_application(cfg, dep.replicas, control_plane_env(), gpus)
            serve.run(
                app, name=dep.app_name, route_prefix=deployments.route(dep.model_id), blocking=False
            )
            deadline = time.monotonic() + DEPLOY_TIMEOUT_S
            while True:
                if not self._still_deploying(dep):
                    return  # undeployed or removed meanwhile: that path deletes the app
                status = serve.status().applications.get(dep.app_name)
                state = str(getattr(status, "status", ""))
                if state.endswith("RUNNING"):
                    break
                if state.endswith("DEPLOY_FAILED") or time.monotonic() > deadline:
                    message = (
                        getattr(status, "message", "") or f"not running after {DEPLOY_TIMEOUT_S:g}s"
                    )
                    raise RuntimeError(str(message)[-2000:])
                time.sleep(0.5)
            deployments.move(self.store, dep.tenant, dep.model_id, DeploymentStatus.DEPLOYED)
            log.info("model %s deployed", dep.model_id)
        except Exception as exc:
            log.exception("deploying model %s failed", dep.model_id)
            if self._still_deploying(dep):  # not undeployed, nor its tenant removed
                self._delete_app(dep.app_name)
                deployments.move(
                    self.store,
                    dep.tenant,
                    dep.model_id,
                    DeploymentStatus.FAILED,
                    error=str(exc)[:4000],
                )

    def _still_deploying(self, dep: deployments.Deployment) -> bool:
        now = deployments.find(self.store, dep.tenant, dep.model_id)
        return now is not None and now.status is DeploymentStatus.DEPLOYING

    def _gpu_resources(self, dep: deployments.Deployment) -> dict[str, float]:
        """The GPU of the replica's bundle, taken from the tenant's reservation itself."""
        if len(dep.placement) != 1:
            raise InvalidInput(f"a GPU deployment runs one replica, not {len(dep.placement)}")
        name = accounts.get_tenant(self.store, dep.tenant).placement_group
        group = reservations.existing().get(name)
        if group is None:
            raise RuntimeError(f"the reservation {name} of tenant {dep.tenant!r} is not placed")
        self.clear_gpu_bundle(dep.tenant, dep.model_id, dep.placement[0])
        return reservations.gpu_resources(str(group["id"]), dep.placement[0], dep.gpus)

    def undeploy(self, tenant: str, model_id: int) -> responses.Deployment:
        dep = deployments.get(self.store, tenant, model_id)
        if dep.status in (DeploymentStatus.UNDEPLOYED, DeploymentStatus.UNDEPLOYING):
            raise Conflict(f"model {model_id} is not deployed ({dep.status.value})")
        deployments.move(self.store, tenant, model_id, DeploymentStatus.UNDEPLOYING)
        threading.Thread(target=self._finish_undeploy, args=(dep,), daemon=True).start()
        return deployments.get(self.store, tenant, model_id).as_json()

    def _finish_undeploy(self, dep: deployments.Deployment) -> None:
        self._delete_app(dep.app_name)
        deployments.move(self.store, dep.tenant, dep.model_id, DeploymentStatus.UNDEPLOYED)

    def _delete_app(self, name: str) -> None:
        try:
            serve.delete(name)
        except Exception:
            log.exception("could not delete Serve application %s", name)

    def remove_all(self, tenant: str) -> None:
        """A tenant removed with --force: its deployments go at once."""
        for dep in deployments.holding(self.store, tenant):
            self._delete_app(dep.app_name)
            deployments.move(self.store, tenant, dep.model_id, DeploymentStatus.UNDEPLOYED)

    def _recover(self) -> dict[str, list[int]]:
        """After Serve is up, deploy again what should be up and is not (in the background)."""
        wanted = deployments.all_in(
            self.store,
            {DeploymentStatus.DEPLOYING, DeploymentStatus.DEPLOYED, DeploymentStatus.UNDEPLOYING},
        )
        if wanted:
            threading.Thread(target=self._recover_when_serving, daemon=True).start()
        return {"checking": [d.model_id for d in wanted]}

    def _recover_when_serving(self) -> None:
        # The server starts Serve (with its HTTP options) after this controller: starting
        # Serve from here first would race it, so wait for the API application.
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S * 2
        apps: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                ray.get_actor(SERVE_CONTROLLER, namespace="serve")
                apps = dict(serve.status().applications)
                if str(getattr(apps.get("ncloud-api"), "status", "")).endswith("RUNNING"):
                    break
            except Exception:
                pass
            time.sleep(1.0)
        redeployed, finished = [], []
        for dep in deployments.all_in(
            self.store, {DeploymentStatus.DEPLOYING, DeploymentStatus.DEPLOYED}
        ):
            state = str(getattr(apps.get(dep.app_name), "status", ""))
            if not state.endswith(("RUNNING", "DEPLOYING")):
                deployments.move(self.store, dep.tenant, dep.model_id, DeploymentStatus.DEPLOYING)
                self._start(dep)
                redeployed.append(dep.model_id)
        for dep in deployments.all_in(self.store, {DeploymentStatus.UNDEPLOYING}):
            threading.Thread(target=self._finish_undeploy, args=(dep,), daemon=True).start()
            finished.append(dep.model_id)
        log.info("deployments recovered: redeployed %s, undeployed %s", redeployed, finished)
