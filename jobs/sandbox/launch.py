"""The one way in: start a sandbox for a handler, give it a job, talk to it, end it.

A `Sandbox` is one bubblewrap process running jobs.sandbox.entry. Starting one costs an
interpreter and a torch import (seconds), so a `WarmPool` keeps one started and waiting,
and a job takes it in milliseconds. Each sandbox runs one job and is then thrown away
with everything it wrote outside its out/ folder and volumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from jobs.sandbox import frames
from jobs.sandbox.policy import Policy, SandboxUnavailable, command
from ncloud.settings import settings

log = logging.getLogger("ncloud.sandbox")
READY_TIMEOUT_S = 120.0
LOG_LINE_BYTES = 8192
MAX_LOG_LINES = 20_000  # per sandbox: the rest of a flood is dropped, not stored
MAX_PAYLOAD = 512 << 20  # one frame from a sandbox (a collective of 64M float64s)
FRAME_QUEUE = 64  # frames read ahead; then the sandbox waits
Frame = tuple[dict[str, Any], bytes]


def new_slot(kind: str) -> Path:
    """A fresh host folder for one sandbox (under NCLOUD_SANDBOX_DIR)."""
    root = settings().sandbox_dir
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # bind mounts need no way through: nobody else looks in
    return root / f"{kind}-{uuid.uuid4().hex[:12]}"


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        with contextlib.suppress(OSError, ValueError):
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [
                    int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()
                ]
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


class Sandbox:
    """One sandboxed process for `handler` under `policy`; `start` it, then `begin` a job."""

    def __init__(self, handler: str, policy: Policy, on_log: Callable[[str], None] | None = None):
        self.handler, self.policy = handler, policy
        self.on_log: Callable[[str], None] = on_log or (lambda line: log.info("%s", line))
        self.frames: Queue[Frame | None] = Queue(maxsize=FRAME_QUEUE)
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None
        self.started_at = 0.0
        self._stderr_tail: list[str] = []
        self._ready = threading.Event()
        self._send_lock = threading.Lock()
        self.begun = False
        self.log_lines = 0

    # -- life ----------------------------------------------------------------------------

    def start(self) -> Sandbox:
        policy = self.policy
        policy.make_slot()
        events_r, events_w = os.pipe()
        # -I: no cwd, PYTHONPATH or user site on sys.path while the entry is still root
        argv = [sys.executable, "-I", "-m", "jobs.sandbox.entry", self.handler, str(events_w)]
        if policy.single_tenant:
            argv.append("--single-tenant")
        if policy.single_tenant:
            args, env = argv, {**policy.environment(), "PATH": os.environ.get("PATH", "")}
        else:
            args, env = command(policy, argv), {}
        self.started_at = time.monotonic()
        try:
            self.proc = _spawn(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(events_w,),
                env=env,
                cwd=str(policy.slot / "out") if policy.single_tenant else "/",
            )
        except OSError as exc:
            os.close(events_r)
            os.close(events_w)
            raise SandboxUnavailable(f"the sandbox could not start: {exc}") from exc
        os.close(events_w)
        if self.proc.stdin is not None:
            os.set_blocking(self.proc.stdin.fileno(), False)
        self._events = os.fdopen(events_r, "rb")
        threading.Thread(target=self._read_frames, daemon=True, name="ncloud-sbx-frames").start()
        threading.Thread(target=self._read_log, daemon=True, name="ncloud-sbx-log").start()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until the entry said `ready`; SandboxUnavailable if it died first."""
        frame = self.recv(timeout_s)
        if frame is None or frame[0].get("kind") != "ready":
            self.kill()
            tail = "\n".join(self._stderr_tail[-5:]) or "no output"
            raise SandboxUnavailable(f"the sandbox did not start ({self.exit_text()}): {tail}")
        self._ready.set()

    def begin(self, args: dict[str, Any], tenant_id: int) -> None:
        """Hand the sandbox its one job (it then drops to the tenant's uid and its limits)."""
        self.policy.tenant_id = tenant_id
        self.policy.hand_over()
        uid = None if self.policy.single_tenant else self.policy.uid
        limits = self.policy.limits
        job = {
            "kind": "job",
            "uid": uid,
            "limits": {
                "processes": limits.processes,
                "cpu_s": limits.cpu_s,
                "file_bytes": limits.file_bytes,
            },
            "args": args,
        }
        self.send(job)
        self.begun = True

    def send(
        self, header: dict[str, Any], payload: bytes | memoryview = b"", timeout_s: float = 60
    ) -> None:
        """Write one frame; FrameError if the sandbox does not take it within timeout_s (a
        sandbox that stops reading must not block its trusted side)."""
        if self.proc is None or self.proc.stdin is None:
            raise frames.FrameError("the sandbox is not running")
        data = frames.encode(header, payload)
        fd = self.proc.stdin.fileno()
        deadline = time.monotonic() + timeout_s
        with self._send_lock:
            view = memoryview(data)
            while view:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [fd], [], left)[1]:
                    raise frames.FrameError("the sandbox stopped reading its input")
                try:
                    view = view[os.write(fd, view[: 1 << 16]) :]
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise frames.FrameError(f"the sandbox went away: {exc}") from exc

    def recv(self, timeout_s: float | None) -> Frame | None:
        """The next frame, or None when it hung up (or when timeout_s passed: see `alive`)."""
        try:
            return self.frames.get(timeout=timeout_s)
        except Empty:
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def rss(self) -> int:
        return tree_rss(self.pid()) if self.alive() else 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)  # bwrap: its PID namespace dies with it
        self.join(10)

    def join(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout_s)
        return self.proc.poll()

    def exit_text(self) -> str:
        code = None if self.proc is None else self.proc.poll()
        if code is None:
            return "still running"
        if code < 0 or code > 128:  # bwrap exits 128 + the signal that ended its child
            number = -code if code < 0 else code - 128
            with contextlib.suppress(ValueError):
                return f"signal {signal.Signals(number).name}"
        return f"exit code {code}"

    def close(self) -> None:
        """Kill it if it still runs and remove its slot folder."""
        self.kill()
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stdout, getattr(self, "_events", None)):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        shutil.rmtree(self.policy.slot, ignore_errors=True)

    # -- readers -------------------------------------------------------------------------

    def _read_frames(self) -> None:
        try:
            while True:
                self.frames.put(frames.read(self._events, MAX_PAYLOAD))
        except (frames.FrameError, OSError, ValueError) as exc:
            if "closed the pipe" not in str(exc):
                self.error = str(exc)
        finally:
            self.frames.put(None)

    def _read_log(self) -> None:
        if self.proc is None or self.proc.stdout is None:
            return
        for raw in iter(lambda: self.proc.stdout.readline(LOG_LINE_BYTES), b""):  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not self._ready.is_set():
                self._stderr_tail = [*self._stderr_tail[-20:], line]
            self.log_lines += 1
            if self.log_lines < MAX_LOG_LINES:
                self.on_log(line)
            elif self.log_lines == MAX_LOG_LINES:
                self.on_log(f"(the log stops here: over {MAX_LOG_LINES} lines)")


_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen from one thread that lives as long as the process.

    bwrap's --die-with-parent is PR_SET_PDEATHSIG, which fires when the *thread* that
    started it ends; a sandbox started from a short-lived thread would die with it.
    """
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(1, thread_name_prefix="ncloud-sandbox-spawner")
    proc: subprocess.Popen[bytes] = _spawner.submit(
        lambda: subprocess.Popen(args, **kwargs)
    ).result()
    return proc


class WarmPool:
    """Keeps one sandbox of a kind started and waiting, so a job does not wait for torch."""

    def __init__(self, factory: Callable[[], Sandbox]) -> None:
        self.factory = factory
        self.lock = threading.Lock()
        self.next: Sandbox | None = None
        self.filling: threading.Thread | None = None

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

    def take(self) -> Sandbox:
        """A ready sandbox (the warm one, else a new one); the pool starts the next."""
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
        self.fill()
        if box is None:
            box = self.factory().start()
            box.wait_ready()
        return box


def self_test(timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
    """Make one sandbox and ask it who it is; SandboxUnavailable (with why) if that fails.

    The server runs this at start: where no sandbox can be made, it refuses to run tenant
    code at all rather than run it bare (unless started with --single-tenant).
    """
    from jobs.sandbox.policy import Policy

    box = Sandbox("probe", Policy(new_slot("probe"), 0, volumes=())).start()
    try:
        box.wait_ready(timeout_s)
        box.begin({}, 0)
        frame = box.recv(timeout_s)
    finally:
        box.close()
    if frame is None or frame[0].get("kind") != "done":
        raise SandboxUnavailable(f"the sandbox's self-test got no answer ({box.exit_text()})")
    if os.geteuid() == 0 and frame[0].get("uid") == 0:
        raise SandboxUnavailable("the sandbox's self-test still ran as root")
    return frame[0]
