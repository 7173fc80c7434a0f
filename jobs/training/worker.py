"""The Ray side of training: one long-lived worker actor per bundle of a tenant's reservation.

The controller keeps a pool of these (named, detached, pinned to their bundle) and hands
each launch of a run to them. A worker runs the user's training in a sandbox that it
started before the run came (jobs.sandbox): it stages the datasets and checkpoints in,
relays the sandbox's events to the store (log lines, print() output, the progress line,
epoch metrics, Running) and its collectives to the other workers, mirrors what the run
wrote to storage, enforces the bundle's memory, syncs a volume in and out, and answers
`wait(key)` with the launch's outcome:
``completed``, ``stopped``, ``failed`` (user code; not retried) or ``crashed`` (the
process died; the controller resumes it). Launches are idempotent by key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cluster.core import accounts
from cluster.core.store import open_store
from jobs.datasets import linked
from jobs.models import state as models
from jobs.sandbox import collective, frames, outputs, staging
from jobs.sandbox.launch import Sandbox, new_slot
from jobs.sandbox.policy import DEFAULT_DATA, Limits, Policy
from jobs.sandbox.pool import WarmPool
from jobs.training import group as process_group
from jobs.training.config import Outcome, TrainConfig, WorkerJob
from jobs.training.relay import Relay, outcome_of
from jobs.volumes import sync as volume_sync
from ncloud.errors import InvalidInput, NcloudError, StorageFull
from ncloud.settings import settings
from ncloud.validation import format_size

log = logging.getLogger("ncloud.runner")


@dataclass
class Launch:
    key: str
    run_id: int
    rank: int
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    box: Sandbox | None = None
    stop_asked: bool = False
    dist_url: str | None = None


class TrainWorker:
    """Wrapped with ray.remote by the controller (see jobs.training.scheduler)."""

    def __init__(self, db_url: str, memory_limit: int = 0) -> None:
        logging.basicConfig(level=logging.INFO)
        self.store = open_store(db_url)
        self.memory_limit = memory_limit
        self.launches: dict[str, Launch] = {}
        self.lock = threading.Lock()
        self.gpu_ids = (
            tuple(os.environ.get("CUDA_VISIBLE_DEVICES", "").split(","))
            if (os.environ.get("CUDA_VISIBLE_DEVICES"))
            else ()
        )
        # Start a sandbox now, off the launch path: importing torch in it takes seconds.
        self.pool = WarmPool(self._sandbox, keep=1, ahead=False)  # this tenant's, reused
        self.pool.fill()

    def _sandbox(self, volumes: tuple[str, ...] = (DEFAULT_DATA,)) -> Sandbox:
        policy = Policy(
            new_slot("train"),
            0,
            Limits(memory_bytes=self.memory_limit, processes=512),
            volumes=volumes,
            gpus=self.gpu_ids,
            single_tenant=settings().single_tenant,
        )
        return Sandbox("train", policy)

    def _take(self, paths: list[str], tenant_id: int) -> Sandbox:
        """The warm sandbox (volume, if any, at /data); other mount points need a new one."""
        if _pooled(paths):
            return self.pool.take(tenant_id)
        box = self._sandbox(tuple(paths)).start()
        box.wait_ready()
        return box

    def _give_back(self, box: Sandbox, tenant_id: int, paths: list[str]) -> None:
        if _pooled(paths):  # a pool's sandbox; the pool checks that it is clean
            self.pool.give_back(box, tenant_id)
        else:
            box.close()

    def rendezvous(self) -> str:
        """A tcp:// address on this node for torch.distributed's rank 0."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ip}:{port}"

    def run(
        self, key: str, run_id: int, rank: int, job: WorkerJob, dist_url: str | None = None
    ) -> dict[str, Any]:
        """Run one worker of a run to its end; a key seen before is not started twice.

        Calls on a threaded actor are not ordered, so launching and waiting are one call.
        `dist_url` is rank 0's rendezvous() for a group: the scheduler passes the reference
        and Ray resolves it before this call begins, so nobody waits on it under a lock.
        """
        if dist_url is not None:
            job = replace(job, cfg=replace(job.cfg, dist_url=dist_url))
        with self.lock:
            launch = self.launches.get(key)
            if launch is None:
                launch = self.launches[key] = Launch(key, run_id, rank)
                threading.Thread(target=self._run, args=(launch, job), daemon=True).start()
        return self.wait(key)

    def wait(self, key: str, timeout_s: float | None = None) -> dict[str, Any]:
        """The outcome of a launch, once it has ended; `unknown` if this worker never saw it."""
        launch = self.launches.get(key)
        if launch is None:
            return {
                "outcome": Outcome.CRASHED,
                "error": "the worker lost this launch (it restarted)",
            }
        if not launch.done.wait(timeout_s):
            return {"outcome": Outcome.RUNNING}
        return dict(launch.result or {"outcome": Outcome.CRASHED, "error": "no result"})

    def stop(self, key: str, grace_s: float) -> bool:
        """Ask the sandbox to checkpoint and end; kill it after the grace period."""
        with self.lock:
            launch = self.launches.get(key)
            if launch is None:  # the stop overtook the launch: it must never start
                launch = self.launches[key] = Launch(key, -1, -1, stop_asked=True)
                launch.result = {"outcome": Outcome.STOPPED, "epochs_done": 0}
                launch.done.set()
        if launch.done.is_set():
            return False
        launch.stop_asked = True
        box = launch.box
        if box is not None and box.begun:  # before begin, _sandboxed sends it after the job
            with contextlib.suppress(frames.FrameError):
                box.send({"kind": "stop"}, timeout_s=1)
        if not launch.done.wait(grace_s) and launch.box is not None:
            launch.box.kill()
            launch.done.wait(30)
        return True

    # -- one launch ----------------------------------------------------------------------

    def _run(self, launch: Launch, job: WorkerJob) -> None:
        run, model = models.get_run(self.store, launch.run_id)
        tenant_id = accounts.get_tenant(self.store, run.tenant).id
        relay = Relay(self.store, run, tenant_id, launch.rank)
        box: Sandbox | None = None
        mounts = model.options.mounts()
        pulled: list[dict[str, volume_sync.Pulled]] = []
        try:
            cfg = _resolve_data(job)
            launch.dist_url = cfg.dist_url
            box = launch.box = self._take([path for _, path in mounts], tenant_id)
            box.on_log = relay.line
            policy = box.policy
            inside = staging.sandbox_config(policy, cfg)
            mirror = staging.Mirror(
                policy.slot / "out" / "run", cfg.run_url, staging.expected_meta(cfg)
            )
            if launch.rank != 0:
                mirror.run_url = ""  # rank 0 alone writes the run's files
            mirror.sent = {f.name: (f.size, f.mtime_ns) for f in outputs.walk(mirror.run_dir)}
            for i, (volume_id, _) in enumerate(mounts):
                pulled.append(
                    volume_sync.pull(self.store, run.tenant, volume_id, policy.volume_dir(i))
                )
            launch.result = self._sandboxed(launch, box, inside, relay, mirror, tenant_id)
            ended = launch.result.get("outcome") in (
                Outcome.COMPLETED,
                Outcome.STOPPED,
                Outcome.FAILED,
            )
            if ended:
                mirror.sync(final=True)
            for i, (volume_id, path) in enumerate(mounts if launch.rank == 0 and ended else []):
                n = volume_sync.push(
                    self.store, run.tenant, volume_id, policy.volume_dir(i), pulled[i]
                )
                relay.line(f"saved {n} file(s) from {path} back to volume {volume_id}")
        except NcloudError as exc:
            launch.result = {"outcome": Outcome.FAILED, "error": exc.message}
        except Exception as exc:  # storage or store trouble: the platform's, so retry it
            log.exception("launch %s failed", launch.key)
            launch.result = {"outcome": Outcome.CRASHED, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            if box is not None:  # recycled for the tenant's next run, or thrown away
                self._give_back(box, tenant_id, [path for _, path in mounts])
            relay.flush(force=True)
            launch.done.set()

    def _sandboxed(
        self,
        launch: Launch,
        box: Sandbox,
        cfg: TrainConfig,
        relay: Relay,
        mirror: staging.Mirror,
        tenant_id: int,
    ) -> dict[str, Any]:
        """Run the rank in its sandbox: relay its events, its collectives and its memory."""
        group = None
        if cfg.world_size > 1:
            try:
                group = process_group.join(
                    str(launch.dist_url),
                    cfg.rank,
                    cfg.world_size,
                    stopped=lambda: launch.stop_asked,
                )
            except process_group.Stopped:  # before the others came: nothing ran
                return {"outcome": Outcome.STOPPED}
        try:
            box.begin({"cfg": asdict(cfg)}, tenant_id)
            if launch.stop_asked:
                box.send({"kind": "stop"})
            return self._follow(box, relay, mirror, group)
        finally:
            if group is not None:
                process_group.leave()

    def _follow(
        self, box: Sandbox, relay: Relay, mirror: staging.Mirror, group: Any
    ) -> dict[str, Any]:
        outcome: dict[str, Any] | None = None
        watch = _MemoryWatch(box, self.memory_limit)
        try:
            while outcome is None and not watch.over:
                frame = box.recv(0.2)
                if frame is not None:
                    outcome = self._event(box, frame, relay, mirror, group)
                elif not box.alive():
                    break
                relay.flush()
        except (frames.FrameError, InvalidInput) as exc:  # the tenant's code broke the protocol
            box.kill()
            outcome = {"outcome": Outcome.FAILED, "error": f"the run's sandbox misbehaved: {exc}"}
        except StorageFull as exc:  # a checkpoint could not be mirrored: the run cannot go on
            box.kill()
            outcome = {"outcome": Outcome.FAILED, "error": f"a checkpoint was lost: {exc.message}"}
        finally:
            watch.stop()
        box.join(30)
        over_memory = watch.over
        if over_memory:
            return {
                "outcome": Outcome.FAILED,
                "error": f"out of memory: the worker used {format_size(over_memory)}, over its "
                f"{format_size(self.memory_limit)} share of the tenant's memory",
            }
        if outcome is not None:
            return outcome
        return {
            "outcome": Outcome.CRASHED,
            "error": f"the training process died ({box.exit_text()})",
        }

    def _event(
        self,
        box: Sandbox,
        frame: tuple[dict[str, Any], bytes],
        relay: Relay,
        mirror: staging.Mirror,
        group: Any,
    ) -> dict[str, Any] | None:
        """One frame from the sandbox; the launch's outcome once it says done or error."""
        header, payload = frame
        kind = header.get("kind")
        if kind == "collective" and group is not None:
            box.send(*collective.relay(header, payload, group))
        elif kind == "done":
            return outcome_of(header.get("result"))
        elif kind == "error":
            return {"outcome": Outcome.FAILED, "error": str(header.get("error"))[:8000]}
        else:
            relay.event(str(kind), header, box.pid())
            if kind == "checkpoint":  # mirrored as soon as the run reports it
                mirror.sync()
        return None


def _resolve_data(job: WorkerJob) -> TrainConfig:
    """The rank's config on this node: linked datasets are ingested into this node's cache
    by their first reader, and the cache is this node's."""
    cfg = replace(job.cfg, cache_dir=str(settings().cache_dir))
    if job.train_link:
        cfg = replace(cfg, train_url=linked.ensure_cached(job.train_link))
    if job.valid_link:
        cfg = replace(cfg, valid_url=linked.ensure_cached(job.valid_link))
    return cfg


def _pooled(paths: list[str]) -> bool:
    """Whether a run with these mount points fits the pool's sandboxes (a volume at /data)."""
    return paths in ([], [DEFAULT_DATA])


class _MemoryWatch:
    """Kills a sandbox whose processes hold more than the limit, whatever the launch is doing."""

    def __init__(self, box: Sandbox, limit: int) -> None:
        self.box, self.limit, self.over = box, limit, 0
        self.done = threading.Event()
        if limit:
            threading.Thread(target=self._watch, daemon=True, name="ncloud-memory").start()

    def _watch(self) -> None:
        while not self.done.wait(0.2):
            used = self.box.rss()
            if used > self.limit:
                self.over = used
                self.box.kill()
                return

    def stop(self) -> None:
        self.done.set()
