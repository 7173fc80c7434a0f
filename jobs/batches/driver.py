"""Batch predictions' side of the controller: each Queued batch runs in a background thread.

The thread drives the batch's Ray tasks (jobs/batches/runner.py) and records the outcome in
the store. The controller makes its helper when it starts: batches that a previous
controller left Queued or Running are started again from the beginning.
"""

from __future__ import annotations

import logging
import threading

from cluster.core.store import Store
from jobs.batches import runner as batch_runner
from jobs.batches import state as batches
from jobs.batches.state import BatchStatus
from ncloud import responses
from ncloud.errors import Conflict

log = logging.getLogger("ncloud.batching")


class Batching:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.threads: dict[int, threading.Thread] = {}
        self.lock = threading.Lock()
        self.resumed = self._resume()

    def _resume(self) -> list[int]:
        found = batches.in_status(self.store, {BatchStatus.QUEUED, BatchStatus.RUNNING})
        for tenant, batch_id in found:
            self._launch(tenant, batch_id)
        if found:
            log.info("resumed batch predictions %s", [b for _, b in found])
        return [batch_id for _, batch_id in found]

    def _launch(self, tenant: str, batch_id: int) -> None:
        worker = threading.Thread(
            target=batch_runner.run,
            args=(self.store, tenant, batch_id),
            name=f"batch-{batch_id}",
            daemon=True,
        )
        self.threads[batch_id] = worker
        worker.start()

    def start(self, tenant: str, batch_id: int) -> responses.Batch:
        """Run a Queued batch in the background (once); answers with the batch as it is now."""
        with self.lock:
            batch = batches.get(self.store, tenant, batch_id)
            running = self.threads.get(batch_id)
            if running is not None and running.is_alive():  # e.g. resumed when this was made
                return batch.as_json()
            if batch.status is not BatchStatus.QUEUED:
                raise Conflict(f"batch prediction {batch_id} is {batch.status.value}, not Queued")
            self._launch(tenant, batch_id)
        return batch.as_json()
