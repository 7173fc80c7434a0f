"""The first code that runs inside a sandbox: trusted, until it hands over to tenant code.

``python -m jobs.sandbox.entry HANDLER`` imports the handler's module (torch and all,
while the sandbox waits in the pool), says ``ready``, reads one job frame, switches to
the tenant's uid (when started as root), sets its limits, and calls the handler with the
job's arguments and the channel. Frames come in on stdin and go out on the fd that
argv[2] names; stdout and stderr are the run's log.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import resource
import sys
import threading
from queue import Queue
from typing import Any, BinaryIO

from jobs.sandbox import frames, seccomp

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


def main() -> None:
    name = sys.argv[1]
    module_name, func_name = HANDLERS[name].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    control = os.fdopen(0, "rb", buffering=0)
    events = os.fdopen(int(sys.argv[2]), "wb")
    channel = Channel(control, events)
    channel.send({"kind": "ready"})
    job, _ = frames.read(control)
    if job.get("kind") != "job":
        raise SystemExit("sandbox: the first frame is not a job")
    if "--single-tenant" not in sys.argv:  # the one way to run without dropping anything
        _become(int(job["uid"]))
        seccomp.install()
    _limit(job.get("limits") or {})
    channel.listen()
    handler(job.get("args") or {}, channel)


if __name__ == "__main__":
    main()
