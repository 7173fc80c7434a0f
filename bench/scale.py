"""The path to 100 nodes, by simulation: the store on PostgreSQL loaded with many tenants
and runs, and what one scheduler tick and the API's main routes cost as the numbers grow.

    python -m bench.scale [--tenants 10,100,1000 --runs-per-tenant 100]

For each size: a fresh database on a PostgreSQL server of this run's own (tests/pg.py),
tenants each with `--runs-per-tenant` models and runs (85% Completed, 10% Queued, 5%
Running on a bundle), written in bulk. Measured, each as a median (and p99) of repeats:

- the store side of one scheduler tick (jobs.training.waiting: the queued runs, each
  such tenant's bundles in use and its runs' options, then the admission decisions; Ray's
  part, one placement-group lookup per tenant with queued runs, is not in it);
- the API's routes for one tenant (GET /models, /models/ID, /datasets, /resources is not:
  it asks the controller), through the real FastAPI app in process (no Serve proxy);
- the ceiling: the same rows of GET /models read with one plain SQL query by psycopg.

It prints the growth of each from the smallest size, the ratio of GET /models to its
ceiling, and what a 100-node cluster would ask of each part.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert

from bench.common import median


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def load(store: Any, tenants: int, per_tenant: int) -> tuple[str, int]:
    """Bulk rows in the shapes the real writers make; (a tenant's name, one model id)."""
    from cluster.core.accounts import tenants as tenant_table
    from cluster.core.store import utcnow
    from jobs.models.options import TrainOptions
    from jobs.models.state import models, runs

    now = utcnow()
    options = json.dumps(TrainOptions(epochs=5, batch_size=32).as_dict())
    with store.write() as conn:
        conn.execute(
            insert(tenant_table),
            [
                {"name": f"t{i}", "cpus": 2.0, "gpus": 0.0, "memory": 1 << 30, "created_at": now}
                for i in range(tenants)
            ],
        )
    model_rows, run_rows = [], []
    model_id = 0
    for t in range(1, tenants + 1):
        for j in range(per_tenant):
            model_id += 1
            model_rows.append(
                {"id": model_id, "tenant_id": t, "name": f"m{j}", "spec_name": "mlp.yaml",
                 "spec_text": "layers: []", "train_dataset_id": 1, "options": options,
                 "created_at": now}
            )  # fmt: skip
            share = j % 20
            status = "Queued" if share < 2 else "Running" if share == 2 else "Completed"
            run_rows.append(
                {"tenant_id": t, "model_id": model_id, "attempt": 1, "status": status,
                 "priority": 0, "epochs": 5, "restarts": 0, "max_restarts": 3,
                 "epochs_done": 5 if status == "Completed" else 0, "stop_requested": False,
                 "placement": json.dumps([0]) if status == "Running" else None,
                 "history": json.dumps([["Queued", now.isoformat(), "submitted"]]),
                 "created_at": now, "updated_at": now}
            )  # fmt: skip
    for table, rows in ((models, model_rows), (runs, run_rows)):
        for start in range(0, len(rows), 5000):
            with store.write() as conn:
                conn.execute(insert(table), rows[start : start + 5000])
    return "t0", 1


def tick(store: Any) -> int:
    """The store side of Scheduler._admit (jobs.training.waiting), and its decisions."""
    from jobs.training import queue
    from jobs.training.waiting import read_waiting_across_tenants

    started = 0
    for w in read_waiting_across_tenants(store):
        started += len(queue.admit(w.tenant.bundles, w.busy, w.requests()).started)
    return started


def measure(pg: Any, tenants: int, per_tenant: int, repeat: int) -> dict[str, Any]:
    import psycopg
    from fastapi.testclient import TestClient
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from cluster.control import schema
    from cluster.core import accounts
    from ncloud.settings import settings
    from serve import deps
    from serve.api import create_app

    url = pg.database(f"scale_{tenants}")
    os.environ["NCLOUD_DB_URL"] = url
    settings.cache_clear()
    deps.store.cache_clear()
    store = schema.open_store(url)
    t0 = time.perf_counter()
    tenant, model_id = load(store, tenants, per_tenant)
    loaded = time.perf_counter() - t0
    _, token = accounts.create_user(store, "bench@example.com", [tenant])
    ticks = _timed(lambda: tick(store), max(3, repeat // 10))
    app = Starlette(routes=[Mount("/api/v1", app=create_app())])
    routes = {"GET /models": "/models", "GET /models/ID": f"/models/{model_id}",
              "GET /datasets": "/datasets"}  # fmt: skip
    times: dict[str, list[float]] = {}
    headers = {"Authorization": f"Bearer {token}", "X-Ncloud-Tenant": tenant}
    with TestClient(app, base_url="http://bench/api/v1", headers=headers) as client:
        for label, path in routes.items():
            client.get(path).raise_for_status()  # warm
            times[label] = _timed(lambda p=path: client.get(p).raise_for_status(), repeat)  # type: ignore[misc]
    sql = (
        "SELECT m.*, r.* FROM models m JOIN runs r ON r.model_id = m.id "
        "WHERE m.tenant_id = %s ORDER BY m.id DESC"
    )
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        ceiling = _timed(lambda: conn.execute(sql, (1,)).fetchall(), repeat)
    store.dispose()
    deps.store().dispose()
    deps.store.cache_clear()
    return {"tenants": tenants, "runs": tenants * per_tenant, "load_s": loaded,
            "tick": ticks, "routes": times, "ceiling": ceiling}  # fmt: skip


def report(results: list[dict[str, Any]]) -> None:
    base = results[0]
    print(f"{'tenants':>8} {'runs':>8} {'load s':>7}  {'what':<14} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'growth':>7}")  # fmt: skip
    for r in results:
        rows = [("tick (store)", r["tick"], base["tick"])]
        rows += [(k, v, base["routes"][k]) for k, v in r["routes"].items()]
        rows.append(("ceiling (SQL)", r["ceiling"], base["ceiling"]))
        for label, values, first in rows:
            growth = median(values) / median(first)
            p50, p99 = median(values) * 1e3, _p99(values) * 1e3
            print(f"{r['tenants']:>8} {r['runs']:>8} {r['load_s']:>7.1f}  {label:<14} "
                  f"{p50:>8.2f} {p99:>8.2f} {growth:>6.1f}x")  # fmt: skip
        ratio = median(r["routes"]["GET /models"]) / median(r["ceiling"])
        print(f"{'':>26}GET /models vs its SQL ceiling: {ratio:.1f}x")
    last = results[-1]
    per_run_tick = median(last["tick"]) / max(last["runs"] // 10, 1)
    print(
        f"\nat {last['runs']} runs ({last['runs'] // 10} queued): a tick's store work takes "
        f"{median(last['tick']) * 1e3:.0f} ms ({per_run_tick * 1e6:.0f} us per queued run); "
        f"the scheduler ticks 10 times a second while runs are active, so a tick over 100 ms "
        "is the first thing that breaks"
    )
    curve = [round(median(r["tick"]) / median(base["tick"]), 1) for r in results]
    print(f"tick growth across sizes: {curve}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tenants", default="10,100,1000")
    p.add_argument("--runs-per-tenant", type=int, default=100)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args()
    os.environ.setdefault("NCLOUD_HOME", tempfile.mkdtemp(prefix="ncloud-scale-"))
    from tests.pg import PostgresServer

    pg = PostgresServer()
    try:
        results = [
            measure(pg, int(n), args.runs_per_tenant, args.repeat) for n in args.tenants.split(",")
        ]
    finally:
        pg.stop()
    report(results)


if __name__ == "__main__":
    main()
