"""The tenant's models and their training runs: the tables and the run state machine.

A model is a network spec plus its training options. Each `train`/`resume` makes a run
(attempt 1, 2, ...); a run goes ``Queued -> Starting -> Running -> Completed | Failed |
Stopped``. Terminal states are final: a resume is a new run. A worker that dies sends
its run back to ``Starting`` (counted in ``restarts``); every transition is timestamped
in the run's history.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from cluster.core import accounts, usage
from cluster.core.store import Store, metadata, utcnow
from cluster.core.transitions import transition
from jobs.models.options import TrainOptions

# The records are part of this module's interface (models.Run, state.RunStatus).
from jobs.models.records import TRANSITIONS, Model, Run, RunStatus, model_of, run_of
from ncloud.errors import Conflict, NotFound
from ncloud.validation import check_name

# The statuses in which a run holds its bundles (what usage accounting counts).
HOLDING = frozenset({RunStatus.STARTING, RunStatus.RUNNING})

models = Table(
    "models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("spec_name", String(255), nullable=False),
    Column("spec_text", Text, nullable=False),
    Column("train_dataset_id", Integer, nullable=False),
    Column("valid_dataset_id", Integer),
    Column("volume_id", Integer),
    Column("options", Text, nullable=False),  # JSON: see TrainOptions
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("tenant_id", "name"),
    # Never reuse a removed model's id: its Serve application, route and storage are named
    # after it (a stale undeploy of the old one would remove the new one).
    sqlite_autoincrement=True,
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("model_id", Integer, ForeignKey("models.id"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("priority", Integer, nullable=False, default=0),
    Column("epochs", Integer, nullable=False),  # the epoch count this run trains up to
    Column("resume_epoch", Integer),  # start from this checkpoint (None: newest, or scratch)
    Column("restarts", Integer, nullable=False, default=0),
    Column("max_restarts", Integer, nullable=False, default=3),
    Column("epochs_done", Integer, nullable=False, default=0),
    Column("reason", Text),  # why a queued run waits
    Column("error", Text),
    Column("progress", Text),  # the latest progress line
    Column("stop_requested", Boolean, nullable=False, default=False),
    Column("placement", Text),  # JSON: bundle index of each worker
    Column("history", Text, nullable=False),  # JSON: [[status, iso time, note], ...]
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("started_at", DateTime),
    Column("ended_at", DateTime),
    UniqueConstraint("model_id", "attempt"),
    sqlite_autoincrement=True,
)


def _history_entry(status: RunStatus, note: str = "") -> list[str]:
    return [status.value, utcnow().isoformat(), note]


def create(
    store: Store,
    tenant: str,
    name: str,
    spec_name: str,
    spec_text: str,
    train_dataset_id: int,
    valid_dataset_id: int | None,
    volume_id: int | None,
    options: TrainOptions,
) -> tuple[Model, Run]:
    """Store a model and its first run (Queued) in one transaction."""
    check_name(name, "model name")
    tenant_id = accounts.get_tenant(store, tenant).id
    now = utcnow()
    try:
        with store.write() as conn:
            model_id = conn.execute(
                insert(models).values(
                    tenant_id=tenant_id,
                    name=name,
                    spec_name=spec_name,
                    spec_text=spec_text,
                    train_dataset_id=train_dataset_id,
                    valid_dataset_id=valid_dataset_id,
                    volume_id=volume_id,
                    options=json.dumps(options.as_dict()),
                    created_at=now,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            _insert_run(conn, tenant_id, int(model_id), 1, options, options.epochs, None)
    except IntegrityError as exc:
        raise Conflict(f"tenant {tenant!r} already has a model named {name!r}") from exc
    model = get(store, tenant, int(model_id))
    return model, latest_run(store, tenant, model.id)


def _insert_run(
    conn: Any,
    tenant_id: int,
    model_id: int,
    attempt: int,
    options: TrainOptions,
    epochs: int,
    resume_epoch: int | None,
    note: str = "submitted",
) -> None:
    now = utcnow()
    conn.execute(
        insert(runs).values(
            tenant_id=tenant_id,
            model_id=model_id,
            attempt=attempt,
            status=RunStatus.QUEUED.value,
            priority=options.priority,
            epochs=epochs,
            resume_epoch=resume_epoch,
            restarts=0,
            max_restarts=options.max_restarts,
            epochs_done=0,
            stop_requested=False,
            history=json.dumps([_history_entry(RunStatus.QUEUED, note)]),
            created_at=now,
            updated_at=now,
        )
    )


def new_attempt(
    store: Store,
    tenant: str,
    model_id: int,
    epochs: int,
    resume_epoch: int | None,
    done: int,
    note: str,
) -> Run:
    """Queue the next run of a model whose latest run has ended (resume); `note` is its first
    history entry's."""
    model = get(store, tenant, model_id)
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.write() as conn:
        last = conn.execute(
            select(runs).where(runs.c.model_id == model_id).order_by(runs.c.attempt.desc())
        ).first()
        if last is not None and not RunStatus(last._mapping["status"]).is_terminal():
            raise Conflict(
                f"model {model_id} is {last._mapping['status']}; stop it before resuming"
            )
        attempt = (last._mapping["attempt"] if last is not None else 0) + 1
        _insert_run(
            conn,
            tenant_id,
            model_id,
            attempt,
            model.options,
            epochs,
            resume_epoch,
            note=note,
        )
        conn.execute(
            update(runs)
            .where((runs.c.model_id == model_id) & (runs.c.attempt == attempt))
            .values(epochs_done=done)
        )
    return latest_run(store, tenant, model_id)


def get(store: Store, tenant: str, model_id: int) -> Model:
    """A model of this tenant; another tenant's id is 'not found', exactly like a missing one."""
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.read() as conn:
        row = conn.execute(
            select(models).where((models.c.id == model_id) & (models.c.tenant_id == tenant_id))
        ).first()
    if row is None:
        raise NotFound(f"no model {model_id} in tenant {tenant!r}")
    return model_of(tenant, row)


def list_models(store: Store, tenant: str) -> list[tuple[Model, Run]]:
    """Every model of the tenant with its latest run, newest first."""
    tenant_id = accounts.get_tenant(store, tenant).id
    with store.read() as conn:
        found = conn.execute(
            select(models).where(models.c.tenant_id == tenant_id).order_by(models.c.id.desc())
        ).all()
        latest: dict[int, Any] = {}
        for row in conn.execute(
            select(runs).where(runs.c.tenant_id == tenant_id).order_by(runs.c.attempt)
        ).all():
            latest[row._mapping["model_id"]] = row
    return [(model_of(tenant, r), run_of(tenant, latest[r._mapping["id"]])) for r in found]


def latest_run(store: Store, tenant: str, model_id: int) -> Run:
    """The model's last attempt, if the model is this tenant's (else NotFound)."""
    with store.read() as conn:
        row = conn.execute(
            _runs_of(tenant).where(runs.c.model_id == model_id).order_by(runs.c.attempt.desc())
        ).first()
    if row is None:
        raise NotFound(f"model {model_id} has no runs")
    return run_of(tenant, row)


def list_runs(store: Store, tenant: str, model_id: int) -> list[Run]:
    """The model's attempts in order; none if the model is not this tenant's."""
    with store.read() as conn:
        rows = conn.execute(
            _runs_of(tenant).where(runs.c.model_id == model_id).order_by(runs.c.attempt)
        ).all()
    return [run_of(tenant, r) for r in rows]


def _runs_of(tenant: str) -> Any:
    """SELECT runs of one tenant only: every per-tenant query of runs starts here."""
    return _runs_with_tenant().where(accounts.tenants.c.name == tenant)


def _runs_with_tenant() -> Any:
    """SELECT runs with their tenant's name, for queries across tenants."""
    return select(runs, accounts.tenants.c.name.label("tenant_name")).join(
        accounts.tenants, accounts.tenants.c.id == runs.c.tenant_id
    )


def get_run(store: Store, run_id: int) -> tuple[Run, Model]:
    """A run by id across tenants (for the controller and workers)."""
    with store.read() as conn:
        row = conn.execute(_runs_with_tenant().where(runs.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"no run {run_id}")
    tenant = row._mapping["tenant_name"]
    run = run_of(tenant, row)
    return run, get(store, tenant, run.model_id)


def runs_in(store: Store, statuses: set[RunStatus]) -> list[Run]:
    """Every run in these statuses across tenants, in queue order (priority, then age)."""
    with store.read() as conn:
        rows = conn.execute(
            _runs_with_tenant()
            .where(runs.c.status.in_([s.value for s in statuses]))
            .order_by(runs.c.priority.desc(), runs.c.id)
        ).all()
    return [run_of(r._mapping["tenant_name"], r) for r in rows]


def recent_tenants(store: Store, n: int) -> list[str]:
    """The `n` tenants (across tenants: for the controller) whose runs were queued last."""
    latest = func.max(runs.c.id).label("latest")
    query = (
        select(accounts.tenants.c.name, latest)
        .join(accounts.tenants, accounts.tenants.c.id == runs.c.tenant_id)
        .group_by(accounts.tenants.c.name)
        .order_by(latest.desc())
        .limit(n)
    )
    with store.read() as conn:
        return [str(row[0]) for row in conn.execute(query).all()]


def options_of(store: Store, model_ids: list[int]) -> dict[int, TrainOptions]:
    """The training options of many models in one query (the queue reads them every tick)."""
    with store.read() as conn:
        rows = conn.execute(
            select(models.c.id, models.c.options).where(models.c.id.in_(model_ids))
        ).all()
    return {int(r[0]): TrainOptions(**json.loads(r[1])) for r in rows}


def tenant_runs_in(store: Store, tenant: str, statuses: set[RunStatus]) -> list[Run]:
    """The tenant's runs in these statuses, in queue order."""
    with store.read() as conn:
        rows = conn.execute(
            _runs_of(tenant)
            .where(runs.c.status.in_([s.value for s in statuses]))
            .order_by(runs.c.priority.desc(), runs.c.id)
        ).all()
    return [run_of(tenant, r) for r in rows]


def queue_positions(store: Store, tenant: str) -> dict[int, int]:
    """model id -> 1-based place in the tenant's queue, for its queued runs."""
    queued = tenant_runs_in(store, tenant, {RunStatus.QUEUED})
    return {r.model_id: i for i, r in enumerate(queued, start=1)}


def move(store: Store, run_id: int, to: RunStatus, note: str = "", **values: Any) -> Run:
    """Change a run's status (checked against TRANSITIONS in the same write) and other
    columns; the history gets one entry."""
    with store.write() as conn:
        row = conn.execute(_runs_with_tenant().where(runs.c.id == run_id)).first()
        if row is None:
            raise NotFound(f"no run {run_id}")
        current = run_of(row._mapping["tenant_name"], row)
        if to not in TRANSITIONS[current.status]:
            raise Conflict(
                f"model {current.model_id} is {current.status.value}; it cannot become {to.value}"
            )
        now = utcnow()
        placement = values.get("placement", current.placement) or []
        if "placement" in values:
            values["placement"] = json.dumps(values["placement"])
        if to is RunStatus.RUNNING and current.started_at is None:
            values.setdefault("started_at", now)
        if to.is_terminal():
            values.setdefault("ended_at", now)
            values.setdefault("progress", None)
        history = [*current.history, _history_entry(to, note)]
        values.update(updated_at=now, history=json.dumps(history))
        # Compare-and-set on the status read above: a writer that moved the run since wins.
        if not transition(
            conn, runs, runs.c.id == run_id, TRANSITIONS, to, values, only_from={current.status}
        ):
            raise Conflict(f"model {current.model_id} changed status while becoming {to.value}")
        # Usage: its bundles are held from Starting until it leaves Running (cluster.core.usage).
        if to in HOLDING and current.status not in HOLDING:
            tenant_id = int(row._mapping["tenant_id"])
            usage.open_period(conn, tenant_id, "run", current.model_id, placement, current.attempt)
        elif to not in HOLDING and current.status in HOLDING:
            usage.close_period(conn, "run", current.model_id)
    return get_run(store, run_id)[0]


def update_run(store: Store, run_id: int, **values: Any) -> None:
    """Columns that are not the status: progress, epochs_done, reason, stop_requested."""
    with store.write() as conn:
        conn.execute(update(runs).where(runs.c.id == run_id).values(**values))


def delete_for_model(conn: Connection, model_id: int) -> None:
    """The model's runs and its own row (jobs.models.removal calls this in its transaction)."""
    conn.execute(runs.delete().where(runs.c.model_id == model_id))
    conn.execute(models.delete().where(models.c.id == model_id))


def names_of(store: Store, tenant_ids: list[int] | None, model_ids: set[int]) -> dict[int, str]:
    """model id -> name for these models of these tenants (None: any tenant; admins' usage)."""
    if not model_ids:
        return {}
    query = select(models.c.id, models.c.name).where(models.c.id.in_(sorted(model_ids)))
    if tenant_ids is not None:
        query = query.where(models.c.tenant_id.in_(tenant_ids))
    with store.read() as conn:
        return {int(r[0]): str(r[1]) for r in conn.execute(query).all()}
