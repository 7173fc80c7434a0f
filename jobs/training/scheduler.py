"""The training queue's engine, inside the controller actor: admit, launch, watch, finish, recover.

A background thread ticks when a worker ends, when a run is submitted, and at least ten
times a second while runs are active. Each tick collects the outcomes of finished workers
(jobs.training.worker.TrainWorker.wait), ends or restarts their runs, and admits queued
runs into free bundles of their tenant's reservation (jobs.training.queue). Everything it
decides is written to the store first, so a restarted controller picks up where this one
stopped: it re-attaches to the workers of Starting and Running runs by launch key, and a
run whose workers are gone is resumed from its last checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

import ray
from ray.util.placement_group import get_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.core import accounts, shutdown
from cluster.core.names import NAMESPACE
from cluster.core.store import Store
from jobs.models import checkpoints, deployments
from jobs.models import state as models
from jobs.models.deployments import DeploymentStatus
from jobs.models.state import RunStatus
from jobs.training import pool, queue
from jobs.training.config import Outcome
from jobs.training.jobs import worker_job
from jobs.training.pool import Active
from jobs.training.waiting import Waiting, read_waiting_across_tenants
from jobs.training.worker import TrainWorker
from ncloud.errors import Conflict, NcloudError
from ncloud.settings import settings

log = logging.getLogger("ncloud.scheduler")
TICK_S = 0.1
STOP_GRACE_S = 30.0
UNREACHABLE_RETRY_S = 1.0
# A worker's stop(grace) kills its sandbox after the grace and waits 30 s more for it; a
# rank silent past that (and this margin) is stuck, so its worker is killed: a stop wins.
STOP_MARGIN_S = 45.0
ADMIT_EVERY_S = 1.0
REPLACING = "the reservation is being placed (again, if a node of it was lost)"
LOST_NODE_NOTE = "a node under it was lost: back in the queue"
CLUSTER_LOST_NOTE = (
    "the server went down under it (stopped without suspending it, or killed): back in the "
    "queue, to resume from its last checkpoint"
)


SUSPENDED_REASON = "the server stopped: it resumes from its checkpoint at the next start"


class Scheduler:
    def __init__(
        self, store: Store, db_url: str, fresh_groups: frozenset[str] = frozenset()
    ) -> None:
        """`fresh_groups`: the reservations this controller had to place anew. A run on one
        of them lost its workers with the cluster (a server stopped without suspending it,
        or killed): no fault of its own, so it is queued again and spends no restart."""
        self.store, self.db_url = store, db_url
        self.active: dict[int, Active] = {}
        self.pool: dict[tuple[str, int], Any] = {}
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.suspending: set[int] = set()  # runs asked to checkpoint for a server stop
        self.closing = False  # the server is stopping: admit nothing more
        self.recovered = self._recover(fresh_groups)
        threading.Thread(target=self._loop, name="scheduler", daemon=True).start()

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        admitted = 0.0
        while True:
            try:
                with self.lock:
                    ended = self._collect()
                    # The queue changes when a run is submitted (wake), a worker ends, or a
                    # reservation is placed (looked at every ADMIT_EVERY_S): not every tick.
                    if ended or self.wake.is_set() or time.monotonic() - admitted > ADMIT_EVERY_S:
                        self.wake.clear()
                        self._admit()
                        admitted = time.monotonic()
                    refs = self._refs()
            except Exception:
                log.exception("scheduler tick failed")
                refs = []
            if refs:  # back as soon as a worker ends (its slot goes to the next run at once)
                ray.wait(refs, num_returns=1, timeout=TICK_S)
            else:
                self.wake.wait(0.5)

    def _refs(self) -> list[Any]:
        return [ref for a in self.active.values() for ref in a.refs]

    def _collect(self) -> bool:
        """Take the outcomes of workers that ended; whether any did."""
        refs = self._refs()
        ready = ray.wait(refs, num_returns=len(refs), timeout=0)[0] if refs else []
        ended = bool(ready)
        for ref in ready:
            for active in list(self.active.values()):
                if ref in active.refs:
                    rank = active.refs.pop(ref)
                    outcome = self._outcome(ref)
                    if outcome is None:  # out of reach, not known dead: ask again soon
                        active.unreachable[rank] = time.monotonic() + UNREACHABLE_RETRY_S
                        continue
                    active.results[rank] = outcome
                    if active.results[rank].get("died") and rank < len(active.actors):
                        self._forget(active.actors[rank])
                    self._settle(active)
        for active in list(self.active.values()):
            self._kill_overdue(active)
            for rank, when in list(active.unreachable.items()):
                if time.monotonic() >= when:
                    del active.unreachable[rank]
                    active.refs[active.actors[rank].wait.remote(active.key)] = rank
            if not active.refs and not active.unreachable and active.results:
                self._settle(active)  # lost at recovery, or a launch that failed
                ended = True
        return ended

    def _outcome(self, ref: Any) -> dict[str, Any] | None:
        """A worker's result; None while Ray cannot reach it but has not declared it dead
        (its node may be going: Ray says so once its health checks fail)."""
        try:
            found = ray.get(ref, timeout=10)
            return dict(found)
        except ray.exceptions.ActorUnavailableError:
            return None
        except Exception as exc:  # the worker actor died (SIGKILL, node lost, no rendezvous)
            lost = pool.node_lost(exc)
            return {
                "outcome": Outcome.CRASHED,
                "error": "its node was lost" if lost else f"the worker died ({type(exc).__name__})",
                "died": True,
                "node_lost": lost,
            }

    def _kill_overdue(self, active: Active) -> None:
        """Kill the workers of ranks that did not answer a stop in time: their wait() then
        fails as a dead worker's, and the run ends (or restarts) without them."""
        overdue = active.overdue()
        if not overdue:
            return
        active.stop_by = None
        for rank in overdue:
            log.warning("run %s: rank %s ignored its stop; killing its worker", active.run_id, rank)
            self._forget(active.actors[rank])
            ray.kill(active.actors[rank], no_restart=True)

    def _forget(self, actor: Any) -> None:
        """Drop a dead pool worker, so the next launch on its bundle makes a new one."""
        for key, pooled in list(self.pool.items()):
            if pooled is actor:
                del self.pool[key]

    def _settle(self, active: Active) -> None:
        """Decide a run's fate once a worker ended: wait for the rest, end it, or restart it."""
        outcomes = {r["outcome"] for r in active.results.values()}
        if active.refs and outcomes <= {Outcome.COMPLETED, Outcome.STOPPED}:
            return  # the others are finishing too
        if active.refs:  # one worker failed or died: end the others before deciding
            if not active.stopping:
                active.stopping = True
                active.stop_within(5.0 + STOP_MARGIN_S)
                for rank, actor in enumerate(active.actors):
                    if rank not in active.results:
                        actor.stop.remote(active.key, 5.0)
            return
        del self.active[active.run_id]
        for actor in active.actors:  # nothing of this launch may outlive it
            actor.stop.remote(active.key, 0.0)
        ended = {r["outcome"] for r in active.results.values()}
        if ended != {Outcome.COMPLETED} and shutdown.under_way(settings().home):
            log.warning("run %s: its workers ended as the server stops; the next start resumes "
                        "it", active.run_id)  # fmt: skip
            return
        run, _ = models.get_run(self.store, active.run_id)
        results = [active.results[r] for r in sorted(active.results)]
        failed = [r for r in results if r["outcome"] == Outcome.FAILED]
        crashed = [r for r in results if r["outcome"] == Outcome.CRASHED]
        done = int(results[0].get("epochs_done", run.epochs_done) or run.epochs_done)
        if failed:
            self._end(run, RunStatus.FAILED, failed[0].get("error"))
        elif run.stop_requested:
            self._end(run, RunStatus.STOPPED, None, epochs_done=max(done, run.epochs_done))
        elif run.id in self.suspending and results[0]["outcome"] != Outcome.COMPLETED:
            self._suspend(run, max(done, run.epochs_done))
        elif crashed and all(r.get("node_lost") for r in crashed):
            self._requeue(run, crashed[0].get("requeue_note") or LOST_NODE_NOTE)
        elif crashed:
            self._restart(run, crashed[0].get("error") or "a worker died")
        elif results[0]["outcome"] == Outcome.STOPPED:
            self._end(run, RunStatus.STOPPED, None, epochs_done=done)
        else:
            self._end(run, RunStatus.COMPLETED, None, epochs_done=done)

    def _end(self, run: models.Run, to: RunStatus, error: str | None, **values: Any) -> None:
        models.move(self.store, run.id, to, note=(error or "")[:200], error=error, **values)
        log.info("run %s of model %s: %s", run.id, run.model_id, to.value)

    def _restart(self, run: models.Run, error: str) -> None:
        if run.restarts >= run.max_restarts:
            self._end(
                run,
                RunStatus.FAILED,
                f"a worker died {run.restarts + 1} time(s), over --max-restarts "
                f"{run.max_restarts}; last: {error}",
            )
            return
        moved = models.move(
            self.store,
            run.id,
            RunStatus.STARTING,
            note=f"restart {run.restarts + 1}: {error[:160]}; {self._resuming_from(run)}"[:600],
            restarts=run.restarts + 1,
        )
        log.warning("run %s: %s; resuming from its last checkpoint", run.id, error)
        self._launch(moved, moved.placement or [], resume=True)

    def _resuming_from(self, run: models.Run) -> str:
        """Which checkpoint a restart will load, and why newer ones are skipped (said in the
        run's history; the trainer's log says it again as it loads)."""
        try:
            model = models.get(self.store, run.tenant, run.model_id)
            epoch, skipped = checkpoints.newest_intact(model.url)
        except Exception as exc:  # storage down: the trainer will say what it found
            return f"resuming from its last checkpoint ({exc})"
        said = f"resuming from epoch {epoch}" if epoch else "no checkpoint: starting at epoch 1"
        return said + (" (" + "; ".join(skipped) + ")" if skipped else "")

    def _requeue(self, run: models.Run, note: str) -> None:
        """A node under the run was lost (or the whole cluster): not the run's fault, so it
        spends no restart. It waits in the queue until its reservation is placed again, then
        resumes from its last checkpoint."""
        models.move(
            self.store, run.id, RunStatus.QUEUED, note=note, placement=None, reason=REPLACING
        )
        log.warning("run %s: %s", run.id, note)

    def _suspend(self, run: models.Run, epochs_done: int) -> None:
        models.move(
            self.store,
            run.id,
            RunStatus.SUSPENDED,
            note=f"the server is stopping: checkpointed after epoch {epochs_done}",
            placement=None,
            reason=SUSPENDED_REASON,
            epochs_done=epochs_done,
        )
        log.info("run %s of model %s: Suspended after epoch %s", run.id, run.model_id, epochs_done)

    def suspend_all(self, grace_s: float) -> dict[str, list[int]]:
        """For `server stop`: admit nothing more, ask every launched run to checkpoint and
        end, and wait (up to grace_s and the stop margin) for them to be Suspended. A run
        that does not end in time is left as it is: the next start finds its workers gone
        with the cluster and queues it again from its last periodic checkpoint. Returns the
        models suspended, and those left."""
        model_of: dict[int, int] = {}
        with self.lock:
            self.closing = True
            for run_id, active in self.active.items():
                run, _ = models.get_run(self.store, run_id)
                if run.stop_requested:
                    continue  # a user's stop in progress: it ends Stopped as asked
                self.suspending.add(run_id)
                model_of[run_id] = run.model_id
                active.stop_within(grace_s + STOP_MARGIN_S)
                for actor in active.actors:
                    actor.stop.remote(active.key, grace_s)
            asked = sorted(self.suspending)
        self.wake.set()
        deadline = time.monotonic() + grace_s + STOP_MARGIN_S
        while time.monotonic() < deadline:
            with self.lock:
                if not (self.suspending & set(self.active)):
                    break
            time.sleep(0.1)
        with self.lock:
            left = sorted(self.suspending & set(self.active))
        # Said by model, as users name them (`model show ID`).
        return {
            "suspended": sorted(model_of[r] for r in asked if r not in left),
            "left": sorted(model_of[r] for r in left),
        }

    # -- admission -----------------------------------------------------------------------

    def _admit(self) -> None:
        if self.closing:
            return
        for w in read_waiting_across_tenants(self.store):
            self._admit_tenant(w)

    def _admit_tenant(self, w: Waiting) -> None:
        waiting = w.runs
        if not pool.reservation_placed(w.tenant.placement_group):  # e.g. a node was lost
            for run in waiting:
                if run.reason != REPLACING:
                    models.update_run(self.store, run.id, reason=REPLACING)
            return
        decided = queue.admit(w.tenant.bundles, w.busy, w.requests())
        for run in waiting:
            if run.id in decided.started:
                chosen = decided.started[run.id]
                moved = models.move(
                    self.store, run.id, RunStatus.STARTING, placement=chosen, reason=None
                )
                # a run back from a lost node has checkpoints of this attempt to resume from
                self._launch(moved, chosen, resume=run.attempt > 1 or run.epochs_done > 0)
            elif decided.waiting.get(run.id) != run.reason:
                models.update_run(self.store, run.id, reason=decided.waiting.get(run.id))

    # -- launching -----------------------------------------------------------------------

    def _worker(self, tenant: accounts.Tenant, index: int, bundle: dict[str, float]) -> Any:
        """The pool worker of one bundle of the tenant's current placement group."""
        key = (tenant.placement_group, index)
        if key not in self.pool:
            group = get_placement_group(tenant.placement_group)
            cls: Any = ray.remote(TrainWorker)
            self.pool[key] = cls.options(
                name=pool.worker_name(tenant.placement_group, index),
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                num_gpus=bundle.get("GPU", 0),
                max_concurrency=32,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=index
                ),
            ).remote(self.db_url, int(bundle.get("memory", 0)))
        return self.pool[key]

    def warm(self, tenant_name: str) -> None:
        """Make the tenant's first worker now, so its sandbox is ready before the first run."""
        with self.lock:
            tenant = accounts.get_tenant(self.store, tenant_name)
            if tenant.bundles and not tenant.bundles[0].get("GPU"):  # a GPU stays free
                self._worker(tenant, 0, tenant.bundles[0])

    def clear_gpu_bundle(self, tenant_name: str, model_id: int, bundle: int) -> None:
        """Free the GPU of a bundle that a deployment now starting holds, for its replica.

        The bundle's pool worker holds its GPU, idle or not, so it stops; but only while
        the deployment still holds the bundle and no training run does (an undeploy and a
        new run can slip in between the deploy and this).
        """
        with self.lock:
            tenant = accounts.get_tenant(self.store, tenant_name)
            dep = deployments.find(self.store, tenant_name, model_id)
            if dep is None or dep.status is not DeploymentStatus.DEPLOYING:
                raise Conflict(f"model {model_id} is no longer being deployed")
            if dep.placement != [bundle]:
                raise Conflict(f"model {model_id} no longer holds bundle {bundle}")
            if bundle in deployments.training_bundles(self.store, tenant_name):
                raise Conflict(f"bundle {bundle} of tenant {tenant_name!r} is training")
            self.pool.pop((tenant.placement_group, bundle), None)
            name = pool.worker_name(tenant.placement_group, bundle)
            killed = pool.kill_worker(name)
        if killed:  # the deployment holds the bundle: no new worker is made there meanwhile
            pool.wait_released(name)

    def _launch(self, run: models.Run, placement: list[int], resume: bool) -> None:
        model = models.get(self.store, run.tenant, run.model_id)
        tenant = accounts.get_tenant(self.store, run.tenant)
        bundles = tenant.bundles
        try:
            job = worker_job(self.store, run, model, resume)
            actors = [self._worker(tenant, b, bundles[b]) for b in placement]
            # rank 0's address, as a reference: Ray hands it to every rank's run() once
            # known, so the scheduler's lock is never held while a worker answers
            dist_url = actors[0].rendezvous.remote() if len(actors) > 1 else None
            active = Active(run.id, run.launch_key, actors)
            for rank, (actor, b) in enumerate(zip(actors, placement, strict=True)):
                rank_cfg = replace(
                    job.cfg,
                    rank=rank,
                    world_size=len(actors),
                    threads=max(int(bundles[b].get("CPU", 1)), 1),
                )
                ref = actor.run.remote(
                    run.launch_key, run.id, rank, replace(job, cfg=rank_cfg), dist_url
                )
                active.refs[ref] = rank
            self.active[run.id] = active
        except NcloudError as exc:
            self._end(run, RunStatus.FAILED, exc.message)
        except Exception as exc:  # the pool worker is gone: drop it so the next try makes one
            for b in placement:
                self.pool.pop((tenant.placement_group, b), None)
            lost = Active(run.id, run.launch_key, [])
            lost.results[0] = {"outcome": Outcome.CRASHED, "error": f"could not launch: {exc!r}"}
            self.active[run.id] = lost

    # -- requests from the API -------------------------------------------------------------

    def stop(self, run: models.Run, grace_s: float = STOP_GRACE_S) -> models.Run:
        """Queued: Stopped now. Starting/Running: ask the workers to checkpoint and end."""
        with self.lock:
            current, _ = models.get_run(self.store, run.id)
            if current.status in (RunStatus.QUEUED, RunStatus.SUSPENDED):
                return models.move(
                    self.store,
                    run.id,
                    RunStatus.STOPPED,
                    note=f"stopped while {current.status.value.lower()}",
                )
            models.update_run(self.store, run.id, stop_requested=True)
            active = self.active.get(run.id)
            if active is not None:
                active.stop_within(grace_s + STOP_MARGIN_S)
                for actor in active.actors:
                    actor.stop.remote(active.key, grace_s)
            self.wake.set()
            return models.get_run(self.store, run.id)[0]

    # -- recovery ------------------------------------------------------------------------

    def _recover(self, fresh_groups: frozenset[str]) -> dict[str, list[int]]:
        """Re-attach to the workers of every launched run; what is gone resumes or ends.
        Suspended runs (a server stop) go back to the queue, at their place."""
        attached: list[int] = []
        lost: list[int] = []
        requeued: list[int] = []
        for run in models.runs_in(self.store, {RunStatus.SUSPENDED}):
            models.move(
                self.store,
                run.id,
                RunStatus.QUEUED,
                note="the server started again: it resumes from its last checkpoint",
                reason=None,
            )
            requeued.append(run.id)
        for run in models.runs_in(self.store, {RunStatus.STARTING, RunStatus.RUNNING}):
            actors = []
            group = accounts.get_tenant(self.store, run.tenant).placement_group
            for b in run.placement or []:
                name = pool.worker_name(group, b)
                try:
                    actors.append(ray.get_actor(name, namespace=NAMESPACE))
                except ValueError:
                    actors = []
                    break
            active = Active(run.id, run.launch_key, actors)
            if actors:
                for rank, actor in enumerate(actors):
                    active.refs[actor.wait.remote(run.launch_key)] = rank
                attached.append(run.id)
            elif group in fresh_groups:  # the cluster went, with every worker: requeue
                active.results[0] = {
                    "outcome": Outcome.CRASHED,
                    "error": "its workers went with the cluster",
                    "node_lost": True,
                    "requeue_note": CLUSTER_LOST_NOTE,
                }
                requeued.append(run.id)
            else:
                active.results[0] = {"outcome": Outcome.CRASHED, "error": "its workers were lost"}
                lost.append(run.id)
            self.active[run.id] = active
        log.info("recovered runs: attached %s, lost %s, queued again %s", attached, lost, requeued)
        return {"attached": attached, "lost": lost, "requeued": requeued}
