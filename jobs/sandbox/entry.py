"""The first code that runs inside a sandbox: trusted, and never runs tenant code itself.

``python -m jobs.sandbox.entry HANDLER`` imports the handler's module (torch and all,
while the sandbox waits in the pool) and says ``ready``. It is then a fork server (a
zygote): for each job frame it forks a child, which switches to the tenant's uid (when
started as root), installs seccomp, sets its limits and calls the handler with the job's
arguments and the channel; the entry waits for that child and says how it ended
(``exit``). Between jobs the trusted side kills whatever the child left running, wipes
what it wrote, and sends ``reset`` with a nonce, which the entry answers with ``ready``
and the nonce (on the frames and on the log), so nothing the last job wrote into the
pipes can pass for the next job's. Frames come in on stdin and go out on the fd that
argv[2] names; stdout and stderr are the run's log.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import resource
import signal
import sys
import threading
import traceback
from queue import Queue
from typing import Any, BinaryIO

from jobs.sandbox import frames, seccomp

BARRIER = "ncloud-sandbox-ready"  # the log line that ends a job's output (with its nonce)

HANDLERS = {
    "check": "jobs.sandbox.handlers:check",
    "train": "jobs.sandbox.handlers:train",
    "serve": "jobs.sandbox.handlers:serve",
    "probe": "jobs.sandbox.handlers:probe",
}


class Channel:
    """The sandbox's side of the pipes: send events; control frames arrive on a queue."""

    def __init__(self, control: BinaryIO, events: BinaryIO) -> None:
        self.events = events
        self.control = control
        self.lock = threading.Lock()
        self.inbox: Queue[tuple[dict[str, Any], bytes] | None] = Queue()
        self.stop_asked = False

    def send(self, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
        with self.lock:
            frames.write(self.events, header, payload)

    def listen(self) -> None:
        """Read control frames in the background; `stop` only sets a flag."""
        threading.Thread(target=self._listen, name="ncloud-control", daemon=True).start()

    def _listen(self) -> None:
        try:
            while True:
                header, payload = frames.read(self.control)
                if header.get("kind") == "stop":
                    self.stop_asked = True
                else:
                    self.inbox.put((header, payload))
        except (frames.FrameError, OSError, ValueError):
            self.inbox.put(None)

    def request(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        """Send a frame and wait for the trusted side's reply (collectives)."""
        self.send(header, payload)
        reply = self.inbox.get()
        if reply is None:
            raise ConnectionError("the trusted side closed the control pipe")
        return reply


PR_CAPBSET_DROP = 24
CLEAR = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]


def _clear_inheritable(libc: ctypes.CDLL) -> None:
    """bwrap leaves the caps it kept inheritable too; keep them only until the uid switch."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise SystemExit("sandbox: capget failed; refusing to run tenant code")
    for d in data:
        d.inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        raise SystemExit("sandbox: capset failed; refusing to run tenant code")


def _become(uid: int) -> None:
    """Drop root for the tenant's own uid; refuse to go on if anything is left (fail closed).

    Started as root, the entry holds only CAP_SETUID, CAP_SETGID and CAP_SETPCAP (bwrap
    dropped the rest): it empties the bounding set, then switches every uid and gid.
    """
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in range(64):
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # past the last cap: EINVAL, ignored
        _clear_inheritable(libc)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if uid == 0 or 0 in (*os.getresuid(), *os.getresgid()) or os.getgroups():
        raise SystemExit("sandbox: could not leave root; refusing to run tenant code")
    with open("/proc/self/status") as f:
        fields = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    if any(int(fields.get(k, "1"), 16) for k in CLEAR) or fields.get("NoNewPrivs") != "1":
        left = {k: fields.get(k) for k in (*CLEAR, "NoNewPrivs")}
        raise SystemExit(f"sandbox: capabilities remain ({left}); refusing to run tenant code")


def _limit(limits: dict[str, int]) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.get("processes"):
        n = int(limits["processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))
    if limits.get("file_bytes"):
        n = int(limits["file_bytes"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    if limits.get("cpu_s"):
        used = resource.getrusage(resource.RUSAGE_SELF)
        n = int(used.ru_utime + used.ru_stime) + int(limits["cpu_s"])
        resource.setrlimit(resource.RLIMIT_CPU, (n, n + 1))


PR_SET_DUMPABLE = 4


def _run_job(handler: Any, job: dict[str, Any], channel: Channel, tenant_safe: bool) -> None:
    """In the forked child: drop everything, then the tenant's code."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # its own /proc/self again; the zygote stays 0
    if tenant_safe:
        _become(int(job["uid"]))
        seccomp.install()
    _limit(job.get("limits") or {})
    channel.listen()
    handler(job.get("args") or {}, channel)


def exit_text_of(code: int) -> str:
    """How a process ended, from its exit code as Popen gives it (a signal: negative)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def main() -> None:
    name = sys.argv[1]
    module_name, func_name = HANDLERS[name].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    # Nothing running as the same uid (unprivileged mode) may read or write our memory.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    control = os.fdopen(0, "rb", buffering=0)
    events = os.fdopen(int(sys.argv[2]), "wb")
    channel = Channel(control, events)
    channel.send({"kind": "ready"})
    sandboxed = "--single-tenant" not in sys.argv  # the one way to run without dropping
    while True:
        try:
            frame, _ = frames.read(control)
        except frames.FrameError:
            return  # the trusted side closed the pipe: the sandbox ends
        kind = frame.get("kind")
        if kind == "reset":
            nonce = str(frame.get("nonce", ""))[:64]
            channel.send({"kind": "ready", "nonce": nonce})
            os.write(1, f"{BARRIER} {nonce}\n".encode())
            continue
        if kind != "job":
            raise SystemExit(f"sandbox: expected a job frame, not {kind!r}")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run_job(handler, frame, channel, sandboxed)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
                if not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        channel.send({"kind": "exit", "how": exit_text_of(os.waitstatus_to_exitcode(status))})


if __name__ == "__main__":
    main()
