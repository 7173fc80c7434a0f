"""What one tick of admission reads from the store, in four queries however many tenants
there are: the queued runs by tenant, each such tenant's record, the bundles each holds
and the options of every queued run's model (bench/scale.py measures this)."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.core import accounts
from cluster.core.store import Store
from jobs.models import deployments
from jobs.models import state as models
from jobs.models.options import TrainOptions
from jobs.training import queue


@dataclass(frozen=True)
class Waiting:
    tenant: accounts.Tenant
    runs: list[models.Run]  # in queue order
    busy: set[int]  # bundles held by its runs and deployments
    options: dict[int, TrainOptions]  # model id -> options

    def requests(self) -> list[queue.Request]:
        """What admission weighs: each queued run's workers and GPUs, in queue order."""
        return [
            queue.Request(r.id, self.options[r.model_id].workers, self.options[r.model_id].gpus)
            for r in self.runs
        ]


def read_waiting_across_tenants(store: Store) -> list[Waiting]:
    """For the scheduler (trusted): every tenant with queued runs."""
    queued = models.runs_in(store, {models.RunStatus.QUEUED})
    if not queued:
        return []
    by_tenant: dict[str, list[models.Run]] = {}
    for run in queued:
        by_tenant.setdefault(run.tenant, []).append(run)
    tenants = {t.name: t for t in accounts.list_tenants(store)}
    busy = deployments.bundles_in_use_across_tenants(store)
    options = models.options_of(store, sorted({r.model_id for r in queued}))
    return [
        Waiting(tenants[name], runs, busy.get(name, set()), options)
        for name, runs in by_tenant.items()
        if name in tenants
    ]
