"""Status changes (cluster.core.transitions): one compare-and-set write, for every machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.control import schema
from cluster.core import accounts
from cluster.core.store import Store
from cluster.core.transitions import sources, transition
from jobs.datasets import state as datasets
from jobs.datasets.state import DatasetStatus
from jobs.models import deployments
from jobs.models import state as models
from jobs.models.deployments import DeploymentStatus
from jobs.models.options import TrainOptions
from jobs.models.state import RunStatus
from ncloud.errors import Conflict, NotFound


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = schema.open_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    accounts.create_tenant(s, "t", 2, 0, 0)
    accounts.create_tenant(s, "u", 2, 0, 0)
    return s


def test_only_one_of_two_writers_from_the_same_status_wins(store: Store) -> None:
    ds = datasets.create(store, "t", "d", "upload", "m.tsv", 1, 1)
    table = datasets.datasets
    row = table.c.id == ds.id
    machine = datasets.TRANSITIONS
    with store.write() as conn:  # both read Uploading; the second write finds Ingesting
        first = transition(
            conn,
            table,
            row,
            machine,
            DatasetStatus.INGESTING,
            {},
            only_from={DatasetStatus.UPLOADING},
        )
        second = transition(
            conn,
            table,
            row,
            machine,
            DatasetStatus.INGESTING,
            {},
            only_from={DatasetStatus.UPLOADING},
        )
    assert (first, second) == (True, False)
    assert sources(machine, DatasetStatus.READY) == {DatasetStatus.INGESTING}


def test_a_refused_move_changes_nothing_and_names_the_status(store: Store) -> None:
    ds = datasets.create(store, "t", "d", "upload", "m.tsv", 1, 1)
    datasets.move(store, "t", ds.id, DatasetStatus.INGESTING)
    datasets.move(store, "t", ds.id, DatasetStatus.READY, rows=7)
    with pytest.raises(Conflict, match="is Ready; it cannot become Ingesting"):
        datasets.move(store, "t", ds.id, DatasetStatus.INGESTING, rows=99)
    assert datasets.get(store, "t", ds.id).rows == 7
    with pytest.raises(NotFound):  # another tenant's dataset: not found, and not moved
        datasets.move(store, "u", ds.id, DatasetStatus.ERROR)
    assert datasets.get(store, "t", ds.id).status is DatasetStatus.READY


def test_a_deployment_moves_only_along_its_machine(store: Store) -> None:
    opts = TrainOptions(epochs=1, batch_size=8)
    model, _ = models.create(store, "t", "m", "net.yaml", "layers: []", 1, None, None, opts)
    batching = deployments.Batching.from_json(None)
    deployments.begin(store, "t", model.id, 1, 0, None, [0], batching)
    deployments.move(store, "t", model.id, DeploymentStatus.UNDEPLOYING)
    # A deploy that finishes after an undeploy began must not bring it back.
    with pytest.raises(Conflict, match="is Undeploying; it cannot become Deployed"):
        deployments.move(store, "t", model.id, DeploymentStatus.DEPLOYED)
    with pytest.raises(NotFound):
        deployments.move(store, "u", model.id, DeploymentStatus.UNDEPLOYED)
    deployments.move(store, "t", model.id, DeploymentStatus.UNDEPLOYED)
    assert deployments.get(store, "t", model.id).status is DeploymentStatus.UNDEPLOYED


def test_a_run_moved_by_someone_else_since_it_was_read_is_a_conflict(store: Store) -> None:
    opts = TrainOptions(epochs=1, batch_size=8)
    _, run = models.create(store, "t", "m", "net.yaml", "layers: []", 1, None, None, opts)
    with store.write() as conn:  # what a racing writer's UPDATE would do under a stale read
        assert transition(
            conn,
            models.runs,
            models.runs.c.id == run.id,
            models.TRANSITIONS,
            RunStatus.STOPPED,
            {},
            only_from={RunStatus.QUEUED},
        )
        assert not transition(
            conn,
            models.runs,
            models.runs.c.id == run.id,
            models.TRANSITIONS,
            RunStatus.STARTING,
            {},
            only_from={RunStatus.QUEUED},
        )
    with pytest.raises(Conflict):
        models.move(store, run.id, RunStatus.STARTING)
    assert models.get_run(store, run.id)[0].status is RunStatus.STOPPED
