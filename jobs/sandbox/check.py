"""The submit-time spec check, in a sandbox: a tenant's spec is built and run only there."""

from __future__ import annotations

import functools
import time
from typing import Any

from jobs.models.specs import Spec
from jobs.sandbox.launch import Sandbox, new_slot
from jobs.sandbox.policy import Limits, Policy
from jobs.sandbox.pool import WarmPool
from ncloud.errors import ERRORS_BY_CODE, Conflict, InvalidInput, NotFound
from ncloud.settings import settings

TIMEOUT_S = 60.0  # wall clock for one check
USER_ERRORS = (InvalidInput, NotFound, Conflict)
POLL_S = 0.05


def _factory() -> Sandbox:
    s = settings()
    limits = Limits(memory_bytes=2 << 30, processes=512, cpu_s=s.check_cpu_s)
    policy = Policy(new_slot("check"), 0, limits, volumes=(), single_tenant=s.single_tenant)
    return Sandbox("check", policy)


@functools.cache
def pool() -> WarmPool:
    return WarmPool(_factory)


def warm() -> None:
    """Start the first check sandbox now (off the request path: importing torch takes seconds)."""
    pool().fill()


def check_spec(
    spec: Spec,
    num_classes: int,
    input_shape: tuple[int, ...],
    tenant_id: int,
    timeout_s: float = TIMEOUT_S,
) -> dict[str, Any]:
    """jobs.models.specs.check() in a sandbox of the tenant's (a fresh fork in it); its
    errors come back as the same classes."""
    request = {
        "name": spec.name,
        "text": spec.text,
        "num_classes": num_classes,
        "input_shape": list(input_shape),
    }
    lines: list[str] = []
    box = pool().take(tenant_id)
    box.on_log = lambda line: lines.append(line) if len(lines) < 200 else None
    try:
        box.begin(request, tenant_id)
        reply = _wait(box, spec.name, timeout_s)
    except BaseException:
        box.close()
        raise
    pool().give_back(box, tenant_id)  # for this tenant's next check; it waits for the fork
    if "ok" in reply and isinstance(reply["ok"], dict):
        return dict(reply["ok"])
    # The sandbox names the error; only a user's kind of error may come back from it.
    cls = ERRORS_BY_CODE.get(str(reply.get("error")), InvalidInput)
    raise (cls if cls in USER_ERRORS else InvalidInput)(str(reply.get("message", ""))[:4000])


def _wait(box: Sandbox, name: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    limit, cpu_s = box.policy.limits.memory_bytes, box.policy.limits.cpu_s
    while time.monotonic() < deadline:
        frame = box.recv(POLL_S)
        if frame is not None and frame[0].get("kind") == "done":
            return frame[0]
        if limit and box.rss() > limit:
            raise InvalidInput(f"checking {name} used over {limit >> 20} MiB of memory")
        if frame is None and not box.alive():
            how = box.exit_text()
            if "SIGXCPU" in how:
                raise InvalidInput(f"checking {name} used over {cpu_s}s of CPU time")
            raise InvalidInput(f"checking {name} failed: its process died ({how})")
    raise InvalidInput(f"checking {name} took over {timeout_s:g}s")
