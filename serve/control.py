"""The API's side of the controller actor: call it, turn an error reply back into a class."""

from __future__ import annotations

import threading
from typing import Any

from ncloud.errors import ERRORS_BY_CODE, NcloudError, Unavailable


class ControlPlane:
    """Calls the detached controller actor by name; a restarted controller is found again."""

    def __init__(self, timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s
        self._handle: Any = None
        self._lock = threading.Lock()

    def _actor(self) -> Any:
        import ray

        from cluster.core.names import CONTROLLER, NAMESPACE

        with self._lock:
            if self._handle is None:
                try:
                    self._handle = ray.get_actor(CONTROLLER, namespace=NAMESPACE)
                except ValueError as exc:
                    raise Unavailable("the controller is not running: restart the server") from exc
            return self._handle

    def call(self, method: str, *args: Any) -> Any:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        try:
            reply = ray.get(getattr(self._actor(), method).remote(*args), timeout=self.timeout_s)
        except RayActorError as exc:
            self._handle = None
            raise Unavailable("the controller restarted; try again in a few seconds") from exc
        except GetTimeoutError as exc:
            raise Unavailable(f"the controller did not answer within {self.timeout_s:g}s") from exc
        if "error" in reply:
            raise ERRORS_BY_CODE.get(reply["error"], NcloudError)(reply["message"])
        return reply["ok"]
