"""Sandboxes kept ready: one started ahead for any tenant, and used ones kept per tenant."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from jobs.sandbox.launch import READY_TIMEOUT_S, Sandbox

log = logging.getLogger("ncloud.sandbox")
KEEP_PER_POOL = 4  # recycled sandboxes a pool keeps (one per tenant, the latest used)


class WarmPool:
    """A fresh sandbox started ahead for any tenant, and used ones kept per tenant.

    `take(tenant)` hands out that tenant's recycled sandbox (milliseconds), else the fresh
    one (and, when `ahead`, starts the next), else starts one. `give_back(box, tenant)`
    recycles a used sandbox for that tenant alone, keeping the latest `keep` tenants'
    ones; one that cannot be recycled is closed and a fresh one started in its place.
    A pool of one tenant's (a training worker's) needs no fresh one ahead: its sandbox
    comes back.
    """

    def __init__(
        self, factory: Callable[[], Sandbox], keep: int = KEEP_PER_POOL, ahead: bool = True
    ) -> None:
        self.factory = factory
        self.keep = keep
        self.ahead = ahead
        self.lock = threading.Lock()
        self.next: Sandbox | None = None
        self.filling: threading.Thread | None = None
        self.kept: OrderedDict[int, Sandbox] = OrderedDict()

    def fill(self) -> None:
        """Start the next sandbox in the background (if none is started or starting)."""
        with self.lock:
            if self.next is not None or (self.filling and self.filling.is_alive()):
                return
            self.filling = threading.Thread(target=self._fill, daemon=True, name="ncloud-warm")
            self.filling.start()

    def _fill(self) -> None:
        try:
            box = self.factory().start()
            box.wait_ready()
        except Exception as exc:  # the job's own take() starts one and raises it
            log.warning("could not start a warm sandbox: %s", exc)
            return
        with self.lock:
            self.next = box

    def take(self, tenant_id: int) -> Sandbox:
        """A ready sandbox for this tenant: its own recycled one, the warm one, or a new one."""
        with self.lock:
            box = self.kept.pop(tenant_id, None)
        if box is not None and box.alive():
            return box
        if box is not None:
            box.close()
        with self.lock:
            box, self.next = self.next, None
            filling = self.filling
        if box is None and filling is not None and filling.is_alive():
            filling.join(READY_TIMEOUT_S)
            with self.lock:
                box, self.next = self.next, None
        if box is not None and not box.alive():
            box.close()
            box = None
        if self.ahead:
            self.fill()
        if box is None:
            box = self.factory().start()
            box.wait_ready()
        return box

    def give_back(self, box: Sandbox, tenant_id: int) -> None:
        """Recycle a used sandbox for this tenant's next job, or close it if it cannot be."""
        if not box.recycle():
            box.close()
            self.fill()
            return
        with self.lock:
            old = self.kept.pop(tenant_id, None)
            self.kept[tenant_id] = box
            evicted = [self.kept.popitem(last=False)[1] for _ in range(len(self.kept) - self.keep)]
        for other in [old, *evicted]:
            if other is not None:
                other.close()

    def close(self) -> None:
        """Close every sandbox the pool holds."""
        with self.lock:
            boxes = [*self.kept.values(), *([self.next] if self.next else [])]
            self.kept.clear()
            self.next = None
        for box in boxes:
            box.close()
