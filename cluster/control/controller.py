"""The controller: one detached Ray actor on the head node that owns every reservation.

It is the only writer of tenants' resources. Ray runs up to 8 of its calls at once (a
slow deploy must not hold up a stop), so tenant operations (create, resize, delete) take
one lock: a fit check and the placement group it guards happen one tenant operation at a
time, and a second create cannot pass a check the first is about to invalidate. On every
(re)start it reconciles Ray with the store: missing placement groups are recreated, stray
ones removed. Methods return ``{"ok": ...}`` or ``{"error": code, "message": ...}`` so a
domain error crosses the actor boundary intact.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cluster.control import lease, schema
from cluster.core import accounts, reservations
from cluster.core.names import NAMESPACE
from cluster.core.reservations import Resources
from cluster.core.store import open_store
from ncloud import responses
from ncloud.errors import Conflict, NcloudError, NotFound
from ncloud.settings import settings

WARM_AT_START = 4  # tenants whose first worker a start makes ready
log = logging.getLogger("ncloud.controller")


def _one_at_a_time(lock: threading.Lock, fn: Callable[[], Any]) -> Callable[[], Any]:
    def locked() -> Any:
        with lock:
            return fn()

    return locked


PENDING_REASON = "larger than the nodes there are now: waiting for the autoscaler to add nodes"


def _grown() -> reservations.Resources | None:
    """How far the autoscaler may grow the cluster (None: no autoscaler here)."""
    return reservations.grown_total(settings().autoscaler_config)


def _reply(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": fn()}
    except NcloudError as exc:
        return {"error": exc.code, "message": exc.message}


class Controller:
    """Wrapped with ray.remote at deploy time (see cluster.deploy)."""

    def __init__(self, db_url: str, front_cfg: dict[str, Any] | None = None) -> None:
        logging.basicConfig(level=logging.INFO)
        if front_cfg is not None:  # first: the API's port answers while the rest starts
            self.front = self._start_front(front_cfg)
        self.store = open_store(db_url)
        self.ingests: dict[int, threading.Thread] = {}
        self.tenant_lock = threading.Lock()  # create, resize, delete: one at a time
        threading.Thread(target=self._renew_lease, name="lease", daemon=True).start()
        self.reconciled = self.reconcile()
        self.resumed = self._resume_ingests()
        from jobs.training.scheduler import Scheduler

        # A reservation placed anew means the cluster under it is new: its runs' workers went
        # with the old one (a server stopped or killed), which charges them no restart.
        fresh = frozenset(self.reconciled["created"] + self.reconciled["failed"])
        self.scheduler = Scheduler(self.store, db_url, fresh)
        from serve.deployments.manager import Serving

        self.serving = Serving(
            self.store, db_url, self.scheduler.lock, self.scheduler.clear_gpu_bundle
        )
        from jobs.batches import driver as batching

        # Made now, not on the first batch: batches a previous controller left Queued or
        # Running start again with this one.
        self.batching = batching.Batching(self.store)
        # The first worker (and its sandbox) of the tenants that ran last is made now, as a
        # new tenant's is: the first run after a start finds one ready instead of waiting
        # seconds. Not every tenant's: a thousand sandboxes at once would swamp the start.
        threading.Thread(target=self._warm_recent, name="warm", daemon=True).start()

    @staticmethod
    def _start_front(front_cfg: dict[str, Any]) -> Any:
        from cluster.control import front

        haproxy = front.binary()
        if haproxy is None:
            log.error("no HAProxy on the head: the API's port has no front")
            return None
        started = front.Front(front.FrontConfig(**front_cfg), haproxy)
        started.start()
        return started

    # -- reconciliation -----------------------------------------------------------------

    def reconcile(self) -> dict[str, list[str]]:
        live = reservations.existing()
        tenants = accounts.list_tenants(self.store)
        wanted = {t.placement_group: t for t in tenants}
        created, removed, failed = [], [], []
        for name in sorted(set(live) - set(wanted)):
            reservations.remove(name)
            removed.append(name)
        for name, tenant in wanted.items():
            if name in live:
                continue
            try:
                reservations.create(name, tenant.reserved)
                created.append(name)
            except NcloudError as exc:
                log.error("could not recreate reservation of %s: %s", tenant.name, exc)
                failed.append(name)
        log.info("reconciled: created %s, removed %s, failed %s", created, removed, failed)
        return {"created": created, "removed": removed, "failed": failed}

    # -- dataset ingest -------------------------------------------------------------------

    def _resume_ingests(self) -> list[int]:
        from jobs.datasets import state as datasets

        found = datasets.in_status(self.store, datasets.DatasetStatus.INGESTING)
        for tenant, dataset_id in found:
            self._start_ingest(tenant, dataset_id)
        return [dataset_id for _, dataset_id in found]

    def _start_ingest(self, tenant: str, dataset_id: int) -> None:
        from jobs.datasets import ingest_runner

        worker = threading.Thread(
            target=ingest_runner.run,
            args=(self.store, tenant, dataset_id),
            name=f"ingest-{dataset_id}",
            daemon=True,
        )
        self.ingests[dataset_id] = worker
        worker.start()

    def _renew_lease(self) -> None:
        """Keep this store's control-plane lease (cluster/control/lease.py) fresh."""
        owner = lease.owner_id(settings().home)
        while True:
            try:
                if not lease.renew(self.store, owner):
                    lease.claim(self.store, owner)  # no row (a store reset): take it again
            except NcloudError as exc:  # the store is away, or another holds the lease
                log.error("control-plane lease: %s", exc.message)
            time.sleep(lease.RENEW_S)

    def ingest_dataset(self, tenant: str, dataset_id: int) -> dict[str, Any]:
        """Move the dataset to Ingesting and ingest it in the background."""
        from jobs.datasets import state as datasets

        def run() -> responses.Dataset:
            running = self.ingests.get(dataset_id)
            if running is not None and running.is_alive():
                raise Conflict(f"dataset {dataset_id} is being ingested already")
            moved = datasets.move(
                self.store,
                tenant,
                dataset_id,
                datasets.DatasetStatus.INGESTING,
                progress_done=0,
                progress_total=0,
                error=None,
            )
            self._start_ingest(tenant, dataset_id)
            return moved.as_json()

        return _reply(run)

    def start_batch(self, tenant: str, batch_id: int) -> dict[str, Any]:
        """Predict a Queued batch in a background thread (see jobs/batches/driver.py)."""
        return _reply(lambda: self.batching.start(tenant, batch_id))

    def ping(self) -> dict[str, Any]:
        return {
            "ok": {
                "reconciled": self.reconciled,
                "runs": self.scheduler.recovered,
                "deployments": self.serving.recovered,
                "batches": self.batching.resumed,
            }
        }

    # -- training runs ------------------------------------------------------------------------

    def wake(self) -> dict[str, Any]:
        """A run was queued: admit it now rather than at the next tick."""
        self.scheduler.wake.set()
        return {"ok": True}

    def suspend_runs(self, grace_s: float) -> dict[str, list[int]]:
        """`server stop`: every running run checkpoints and is Suspended, to resume at the
        next start (jobs.training.scheduler.Scheduler.suspend_all)."""
        return self.scheduler.suspend_all(grace_s)

    def stop_run(self, tenant: str, model_id: int) -> dict[str, Any]:
        from jobs.models import state as models

        def run() -> dict[str, Any]:
            found = models.latest_run(self.store, tenant, model_id)
            if found.status.is_terminal():
                raise Conflict(f"model {model_id} is {found.status.value}; nothing to stop")
            return {"status": self.scheduler.stop(found).status.value}

        return _reply(run)

    def deploy_model(
        self,
        tenant: str,
        model_id: int,
        replicas: int,
        gpus: int,
        checkpoint: int | None,
        batching: dict[str, Any],
    ) -> dict[str, Any]:
        from jobs.models.deployments import Batching

        options = Batching(**{**batching, "volumes": tuple(batching.get("volumes") or ())})
        return _reply(
            lambda: self.serving.deploy(tenant, model_id, replicas, gpus, checkpoint, options)
        )

    def undeploy_model(self, tenant: str, model_id: int) -> dict[str, Any]:
        return _reply(lambda: self.serving.undeploy(tenant, model_id))

    # -- reservations -------------------------------------------------------------------

    def _reserved_by_others(self, exclude: str | None) -> Resources:
        total = Resources(0, 0, 0)
        for t in accounts.list_tenants(self.store):
            if t.name != exclude:
                total = total.plus(t.reserved)
        return total

    def create_tenant(self, name: str, cpus: float, gpus: float, memory: int) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            want = Resources(cpus, gpus, memory)
            if accounts.tenant_exists(self.store, name):
                accounts.create_tenant(self.store, name, cpus, gpus, memory)  # raises Conflict
            now = reservations.check_fit(
                want, reservations.cluster_total(), self._reserved_by_others(None), _grown()
            )
            tenant = accounts.create_tenant(self.store, name, cpus, gpus, memory)
            try:
                reservations.create(tenant.placement_group, want, wait=now)
            except NcloudError:
                schema.delete_tenant(self.store, name, force=True)
                raise
            self._warm(name)
            return self._describe(tenant)

        return _reply(_one_at_a_time(self.tenant_lock, run))

    def _warm_recent(self) -> None:
        """After a start, not after a restart of this actor alone: a tenant whose first
        worker is alive (detached, it outlives the controller) is left alone, since making
        a handle to it while the scheduler re-attaches its runs cost a run a restart
        (tests/integration/test_chaos.py)."""
        import ray

        from jobs.models import state as models
        from jobs.training import pool

        try:
            recent = models.recent_tenants(self.store, WARM_AT_START)
            for name in recent:
                group = accounts.get_tenant(self.store, name).placement_group
                try:
                    ray.get_actor(pool.worker_name(group, 0), namespace=NAMESPACE)
                except ValueError:  # no worker: this is a start
                    self._warm(name)
        except NcloudError as exc:
            log.error("could not warm the tenants that ran last: %s", exc.message)

    def _warm(self, name: str) -> None:
        if settings().warm_workers:
            try:
                self.scheduler.warm(name)
            except Exception:  # a worker made later, at the first run, is as good
                log.exception("could not start the first worker of tenant %s", name)

    def resize_tenant(self, name: str, cpus: float, gpus: float, memory: int) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            old = accounts.get_tenant(self.store, name)
            if self._training_bundles(name):
                raise Conflict(
                    f"tenant {name!r} has training runs or deployments: end them before resizing"
                )
            want = Resources(cpus, gpus, memory)
            now = reservations.check_fit(
                want, reservations.cluster_total(), self._reserved_by_others(name), _grown()
            )
            # A placement group cannot grow in place: free the old one, place the new one,
            # and put the old one back if the new one does not fit after all.
            reservations.remove(old.placement_group)
            reservations.wait_removed(old.placement_group)
            new = accounts.resize_tenant(self.store, name, cpus, gpus, memory)
            try:
                reservations.create(new.placement_group, want, wait=now)
            except NcloudError:
                accounts.resize_tenant(self.store, name, old.cpus, old.gpus, old.memory)
                restored = accounts.get_tenant(self.store, name)
                reservations.create(restored.placement_group, restored.reserved)
                raise
            self._warm(name)
            return self._describe(new)

        return _reply(_one_at_a_time(self.tenant_lock, run))

    def delete_tenant(self, name: str, force: bool) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            from cluster.core import storage

            if force:
                self.serving.remove_all(name)
            if self._training_bundles(name):
                raise Conflict(
                    f"tenant {name!r} has training runs or deployments: stop or undeploy them first"
                )
            tenant = schema.delete_tenant(self.store, name, force)
            reservations.remove(tenant.placement_group)
            # Rows are gone; the files they named go too, so a new tenant of that name starts empty.
            storage.remove_tree(storage.tenant_url(name))
            return {"name": tenant.name, "removed": True}

        return _reply(_one_at_a_time(self.tenant_lock, run))

    def describe_tenant(self, name: str) -> dict[str, Any]:
        return _reply(lambda: self._describe(accounts.get_tenant(self.store, name)))

    def _describe(self, tenant: accounts.Tenant) -> dict[str, Any]:
        live = reservations.existing().get(tenant.placement_group)
        if live is None and accounts.tenant_exists(self.store, tenant.name) is False:
            raise NotFound(f"no tenant {tenant.name!r}")
        used = reservations.usage(live["id"]) if live else Resources(0, 0, 0)
        # A bundle's pool worker holds its GPU even when idle: GPUs count by bundle only.
        in_use = Resources(used.cpus, 0, used.memory)
        bundles = tenant.bundles
        training = self._training_bundles(tenant.name)
        for b in training:
            if b < len(bundles):
                shape = bundles[b]
                in_use = in_use.plus(
                    Resources(shape.get("CPU", 0), shape.get("GPU", 0), int(shape.get("memory", 0)))
                )
        return {
            "tenant": tenant.name,
            "reserved": tenant.reserved.as_dict(),
            "in_use": in_use.as_dict(),
            "placement_group": tenant.placement_group,
            "state": live["state"] if live else "MISSING",
            # Pending: larger than the nodes there are; the autoscaler adds nodes for it
            "reason": PENDING_REASON if live and live["state"] == "PENDING" else None,
            "bundles": bundles,
            "training_bundles": sorted(training),
        }

    def _training_bundles(self, tenant: str) -> set[int]:
        """Bundles held by training runs and deployments."""
        from jobs.models import deployments

        return deployments.bundles_in_use(self.store, tenant)

    def cluster(self) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            total = reservations.cluster_total()
            reserved = self._reserved_by_others(None)
            return {
                "total": total.as_dict(),
                "reserved": reserved.as_dict(),
                "unreserved": total.minus(reserved).as_dict(),
            }

        return _reply(run)
