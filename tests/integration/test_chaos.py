"""Chaos: kill -9 of each part of the platform while one run trains and two wait.

In turn: the controller, the API replica, the Serve controller, the run's worker actor and
its training child. (Serve's proxy carries no run: test_front kills it, polling the API and
a deployed model's predictions as it does.) After each, the API answers again, the run goes on
(or resumes, counting a restart, when its own processes were the ones killed), the waiting
runs keep their places, and no run is lost or duplicated. At the end the store and Ray agree:
every run ended, one controller, one API replica, and the queued runs ran in their order.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from examples.digits import make_digits
from tests.integration.conftest import Server, actor_pid, upload_dataset, wait_for
from tests.integration.lab import TERMINAL, running_pid, slow_py, until, worker_actor_pid

PLATFORM = ("Controller", "ServeReplica:ncloud-api:api", "ServeController")


def _alive(server: Server, class_name: str) -> int:
    from ray.util.state import list_actors

    found = list_actors(
        address=server.dashboard_url,
        filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
    )
    return len(found)


def _waiting_in_order(client: Any, first: int, second: int) -> bool:
    one, two = client.models.show(first), client.models.show(second)
    return bool(
        one["status"] == two["status"] == "Queued" and (one["position"], two["position"]) == (1, 2)
    )


def _resumed(client: Any, model_id: int, restarts: int) -> Callable[[], bool]:
    def check() -> bool:
        found = client.models.show(model_id)
        return bool(found["restarts"] > restarts and found["status"] == "Running")

    return check


@pytest.mark.timeout(900)
def test_kill_9_of_each_part_loses_and_duplicates_nothing(
    server: Server, tenant: Callable[..., Any], tmp_path: Path
) -> None:
    tenant("chaos", cpus=1, memory="1GiB")
    user = server.client().users.add("chaos@example.com", ["chaos"])
    try:
        client = server.client(token=user["token"], tenant="chaos")
        make_digits(tmp_path, size=16)
        train = upload_dataset(server, tmp_path / "train.tsv", "train", user["token"], "chaos")
        spec = slow_py(sleep=0.03)
        long = client.models.train("long", "net.py", spec, train, epochs=400)
        until(client, long["id"], {"Running"})
        queued = [client.models.train(f"q{i}", "net.py", spec, train, epochs=1) for i in (1, 2)]
        first, second = (int(q["id"]) for q in queued)
        wait_for(lambda: _waiting_in_order(client, first, second), 60, "both queued in order")
        outcomes: list[str] = []

        for part in PLATFORM:
            pid, killed = actor_pid(server, part), time.monotonic()
            os.kill(pid, signal.SIGKILL)
            back_again = lambda part=part, pid=pid: actor_pid(server, part) != pid  # noqa: E731
            wait_for(back_again, 180, f"{part} to come back")
            wait_for(lambda: client.models.list(), 180, f"the API after {part}")
            back = time.monotonic() - killed
            shown = client.models.show(long["id"])
            assert shown["status"] == "Running" and shown["restarts"] == 0, (part, shown)
            assert _waiting_in_order(client, first, second), part
            assert len(client.models.list()) == 3, part  # nothing lost, nothing doubled
            outcomes.append(  # the API's own downtime is polled by test_front's chaos tests
                f"{part}: a new one and the API answering {back:.1f}s after the kill, "
                "run went on, queue kept"
            )

        for part, victim in (
            ("worker actor", lambda: worker_actor_pid(server, running_pid(client, long["id"]))),
            ("training child", lambda: running_pid(client, long["id"])),
        ):
            before = client.models.show(long["id"])
            pid, killed = victim(), time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_for(_resumed(client, long["id"], before["restarts"]), 240, f"{part} resume")
            assert _waiting_in_order(client, first, second), part
            outcomes.append(f"{part}: resumed in {time.monotonic() - killed:.1f}s, queue kept")

        stopped = client.models.stop(long["id"])
        assert stopped["status"] == "Stopped" and stopped["restarts"] == 2, stopped
        epochs = [m["epoch"] for m in client.models.show(long["id"])["metrics"]]
        assert epochs == list(range(1, len(epochs) + 1)), epochs  # none lost, none twice
        done = [until(client, q, TERMINAL) for q in (first, second)]
        assert [d["status"] for d in done] == ["Completed", "Completed"], done
        started = [
            [
                h["at"]
                for h in client.models.show(q)["runs"][-1]["history"]
                if h["status"] == "Running"
            ]
            for q in (first, second)
        ]
        assert started[0][0] < started[1][0], started  # in the order they were queued
        assert [len(client.models.show(q)["runs"]) for q in (first, second)] == [1, 1]
        assert _alive(server, "Controller") == 1
        assert _alive(server, "ServeReplica:ncloud-api:api") == 1
        assert all(m["status"] in TERMINAL for m in client.models.list())
        print("\n".join(["chaos:", *outcomes]))
    finally:
        server.client().users.remove("chaos@example.com")
