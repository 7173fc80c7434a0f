"""The one way in: start a sandbox for a handler, give it a job, talk to it, end it.

A `Sandbox` is one bubblewrap process running jobs.sandbox.entry. Starting one costs an
interpreter and a torch import (seconds), so a pool (jobs.sandbox.pool) keeps one started
and waiting, and a job takes it in milliseconds. Inside, each job runs in a fresh fork of the entry
(jobs.sandbox.entry), so a used sandbox can be `recycle`d for the same tenant's next job:
whatever the job left running is killed, /tmp, in/, out/ and the volumes are emptied, and
a reset round trip with a nonce fences off anything it left in the pipes. A sandbox is
never handed to another tenant; one that cannot be recycled cleanly is thrown away.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
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
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from jobs.sandbox import frames
from jobs.sandbox.entry import BARRIER, exit_text_of
from jobs.sandbox.policy import Policy, SandboxUnavailable, command
from jobs.sandbox.procs import empty, rss_of, spawn, tree_pids
from ncloud.settings import settings

log = logging.getLogger("ncloud.sandbox")
READY_TIMEOUT_S = 120.0
LOG_LINE_BYTES = 8192
MAX_LOG_LINES = 20_000  # per sandbox: the rest of a flood is dropped, not stored
MAX_PAYLOAD = 512 << 20  # one frame from a sandbox (a collective of 64M float64s)
FRAME_QUEUE = 64  # frames read ahead; then the sandbox waits
PIPE_BYTES = 1 << 20  # the input pipe (the unprivileged most): a batch of 32 images fits
RECYCLE_TIMEOUT_S = 5.0  # for a job's process to end and its sandbox to be emptied
Frame = tuple[dict[str, Any], bytes]


def new_slot(kind: str) -> Path:
    """A fresh host folder for one sandbox (under NCLOUD_SANDBOX_DIR)."""
    root = settings().sandbox_dir
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # bind mounts need no way through: nobody else looks in
    return root / f"{kind}-{uuid.uuid4().hex[:12]}"


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
        self._baseline: set[int] = set()  # bwrap and the entry: the rest is a job's
        self._job_ended = threading.Event()
        self._job_how: str | None = None
        self._log_barrier: str | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

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
            self.proc = spawn(
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
            with contextlib.suppress(OSError):  # a batch's frame fits: a send need not wait
                fcntl.fcntl(self.proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
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
        self._baseline = set(tree_pids(self.pid()))
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

    async def recv_async(self, timeout_s: float) -> Frame | None:
        """`recv` for a coroutine: it waits without holding up its event loop (the frame
        reader wakes it). One coroutine at a time may wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            with contextlib.suppress(Empty):
                return self.frames.get_nowait()
            woken: asyncio.Future[None] = loop.create_future()
            self._waiter = (loop, woken)
            try:
                if self.frames.empty():  # checked after the waiter is set: no wake is lost
                    await asyncio.wait_for(woken, max(0.0, deadline - loop.time()))
            except TimeoutError:
                return None
            finally:
                self._waiter = None

    def alive(self) -> bool:
        """Whether the job may still say something: its process runs, or its frames wait."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        return not self._job_ended.is_set() or not self.frames.empty()

    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def rss(self) -> int:
        """Resident bytes of the job's processes (the waiting entry is not the job's)."""
        if not self.alive():
            return 0
        return rss_of([p for p in tree_pids(self.pid()) if p not in self._baseline])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)  # bwrap: its PID namespace dies with it
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def join(self, timeout_s: float) -> None:
        """Wait until the job's process has ended (or the whole sandbox has)."""
        deadline = time.monotonic() + timeout_s
        while self.proc is not None and self.proc.poll() is None:
            if self._job_ended.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                return

    def exit_text(self) -> str:
        code = None if self.proc is None else self.proc.poll()
        if code is None and self._job_how is not None:
            return self._job_how
        if code is None:
            return "still running"
        return exit_text_of(128 - code if code > 128 else code)  # bwrap: 128 + the signal

    def close(self) -> None:
        """Kill it if it still runs and remove its slot folder."""
        self.kill()
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stdout, getattr(self, "_events", None)):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        shutil.rmtree(self.policy.slot, ignore_errors=True)

    # -- reuse ---------------------------------------------------------------------------

    def recycle(self, timeout_s: float = RECYCLE_TIMEOUT_S) -> bool:
        """Make a used sandbox as good as new for its tenant's next job; False if it cannot
        be (then close it). Nothing of the last job may be left: no process, no file in
        /tmp, in/, out/ or a volume, no frame or log line in the pipes."""
        deadline = time.monotonic() + timeout_s
        if not self.begun or not self._ready.is_set() or self.error is not None:
            return False
        if self.proc is None or self.proc.poll() is not None:
            return False
        if not self._job_ended.wait(max(0.0, deadline - time.monotonic())):
            return False  # the job's process is still running
        try:
            if not self._kill_strays(deadline):
                return False
            self._wipe()
        except OSError as exc:
            log.warning("a sandbox could not be emptied for reuse: %s", exc)
            return False
        nonce = uuid.uuid4().hex
        self._log_barrier = f"{BARRIER} {nonce}"
        try:
            self.send(
                {"kind": "reset", "nonce": nonce}, timeout_s=max(0.1, deadline - time.monotonic())
            )
        except frames.FrameError:
            return False
        while time.monotonic() < deadline:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if frame is None and (self.proc.poll() is not None or self.error is not None):
                return False
            if frame is not None and frame[0] == {"kind": "ready", "nonce": nonce, "nbytes": 0}:
                # Only now: an exit frame the job forged before the real one is behind us.
                self._job_ended.clear()
                self._job_how = None
                self.begun = False
                self.on_log = lambda line: log.info("%s", line)
                return True
        return False

    def _kill_strays(self, deadline: float) -> bool:
        """SIGKILL every process in the sandbox but bwrap and the entry, until none is left."""
        while time.monotonic() < deadline:
            strays = [p for p in tree_pids(self.pid()) if p not in self._baseline]
            if not strays:
                return True
            for p in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.005)
        return False

    def _wipe(self) -> None:
        """Empty what a job could write: the slot's folders and, inside, /tmp."""
        slot = self.policy.slot
        for sub in ["in", "out", *(f"volumes/{i}" for i in range(len(self.policy.volumes)))]:
            empty(str(slot / sub))
        if not self.policy.single_tenant:
            inner = self._inner_pid()
            empty(f"/proc/{inner}/root/tmp")

    def _inner_pid(self) -> int:
        """A process of ours inside the sandbox's own mount namespace (the entry's, or bwrap's)."""
        mine = os.readlink("/proc/self/ns/mnt")
        for p in sorted(self._baseline):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{p}/ns/mnt") != mine:
                    return p
        raise OSError("no process of the sandbox is in its mount namespace")

    # -- readers -------------------------------------------------------------------------

    def _read_frames(self) -> None:
        try:
            while True:
                frame = frames.read(self._events, MAX_PAYLOAD)
                if frame[0].get("kind") == "exit" and self.begun:  # the job's process ended
                    self._job_how = str(frame[0].get("how", "ended"))[:200]
                    self._job_ended.set()
                    self._put(None)  # wakes a waiting recv, as a hang-up would
                    continue
                self._put(frame)
        except (frames.FrameError, OSError, ValueError) as exc:
            if "closed the pipe" not in str(exc):
                self.error = str(exc)
        finally:
            self._put(None)

    def _put(self, frame: Frame | None) -> None:
        self.frames.put(frame)
        waiter = self._waiter
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                waiter[0].call_soon_threadsafe(_settle, waiter[1])

    def _read_log(self) -> None:
        if self.proc is None or self.proc.stdout is None:
            return
        for raw in iter(lambda: self.proc.stdout.readline(LOG_LINE_BYTES), b""):  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self._log_barrier is not None:  # the last job's output, up to the reset
                if line == self._log_barrier:
                    self._log_barrier = None
                continue
            if not self._ready.is_set():
                self._stderr_tail = [*self._stderr_tail[-20:], line]
            self.log_lines += 1
            if self.log_lines < MAX_LOG_LINES:
                self.on_log(line)
            elif self.log_lines == MAX_LOG_LINES:
                self.on_log(f"(the log stops here: over {MAX_LOG_LINES} lines)")


def _settle(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


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
