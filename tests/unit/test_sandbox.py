"""The sandbox on its own (no Ray): frames, the bubblewrap command, and a real sandbox."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import jobs
from jobs.sandbox import frames
from jobs.sandbox.launch import Sandbox, new_slot, self_test
from jobs.sandbox.policy import Policy, SandboxUnavailable, command
from ncloud.settings import settings


def test_frames_round_trip_and_refuse_what_is_not_a_frame() -> None:
    buf = io.BytesIO()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    frames.write(buf, {"kind": "output", **frames.array_header(a)}, a.tobytes())
    buf.seek(0)
    header, payload = frames.read(buf)
    assert header["kind"] == "output"
    np.testing.assert_array_equal(frames.to_array(header, payload), a)
    with pytest.raises(frames.FrameError, match="does not fit"):
        frames.to_array({"dtype": "float32", "shape": [3, 3]}, payload)
    with pytest.raises(frames.FrameError, match="dtype"):
        frames.to_array({"dtype": "object", "shape": [1]}, b"x")
    with pytest.raises(frames.FrameError, match="closed"):
        frames.read(io.BytesIO(b"\x00\x00"))
    with pytest.raises(frames.FrameError, match="over the limit"):
        frames.read(io.BytesIO(b"\xff\xff\xff\xff\x00\x00\x00\x00"))
    with pytest.raises(frames.FrameError, match="not JSON"):
        frames.read(io.BytesIO(b"\x00\x00\x00\x02\x00\x00\x00\x00{x"))


def test_the_command_binds_only_what_it_lists_and_clears_the_environment() -> None:
    os.environ["NCLOUD_SECRET_FOR_TEST"] = "x"
    try:
        args = command(Policy(new_slot("t"), 7), ["python"])
    finally:
        del os.environ["NCLOUD_SECRET_FOR_TEST"]
    text = " ".join(args)
    assert "--clearenv" in args and "--unshare-net" in args and "--unshare-pid" in args
    assert "NCLOUD_SECRET_FOR_TEST" not in text and str(settings().home) not in text.replace(
        str(settings().sandbox_dir), ""
    )
    assert "--setenv NCLOUD_DATA_DIR /data" in text


def test_a_real_sandbox_is_not_root_and_sees_only_its_own_root() -> None:
    found = self_test()
    if os.geteuid() == 0:
        assert found["uid"] == found["gid"] == 200_000  # tenant 0's uid
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(found[cap], 16) == 0, (cap, found[cap])
    assert found["NoNewPrivs"] == "1"
    # The interpreter, the venv and this checkout are bound at their own paths, so their
    # top folders show (a clone under /check shows /check); nothing else of the host does.
    bound = {Path(p).resolve().parts[1] for p in (sys.prefix, sys.base_prefix, jobs.__file__)}
    assert set(found["root"]) <= {"bin", "dev", "etc", "job", "lib", "lib64", "proc", "root",
                                  "sbin", "tmp", "usr", "data"} | bound  # fmt: skip
    assert "ncloud.db" not in found["root"]


def test_no_bubblewrap_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCLOUD_BWRAP", "/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable, match="could not start"):
        self_test()


def test_a_sandbox_that_dies_before_ready_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCLOUD_BWRAP", "/bin/false")
    box = Sandbox("probe", Policy(new_slot("t"), 0, volumes=()))
    with pytest.raises(SandboxUnavailable, match="did not start"):
        box.start().wait_ready(10)
    box.close()


def test_single_tenant_runs_the_same_entry_without_bubblewrap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NCLOUD_BWRAP", "/nonexistent/bwrap")  # never used in this mode
    box = Sandbox("probe", Policy(new_slot("t"), 0, volumes=(), single_tenant=True)).start()
    try:
        box.wait_ready(60)
        box.begin({}, 0)
        frame = box.recv(60)
    finally:
        box.close()
    assert frame is not None and frame[0]["kind"] == "done"
    assert frame[0]["uid"] == os.getuid()  # nothing dropped: the switch says so


def test_the_seccomp_filter_denies_new_namespaces_but_not_threads_or_fork() -> None:
    import subprocess
    import sys

    code = (
        "import ctypes, os, threading\n"
        "from jobs.sandbox import seccomp\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.prctl(38, 1, 0, 0, 0)\n"  # PR_SET_NO_NEW_PRIVS, as bwrap sets it
        "seccomp.install()\n"
        "assert libc.unshare(0x10000000) == -1 and ctypes.get_errno() == 1\n"
        "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
        "pid = os.fork()\n"
        "os._exit(0) if pid == 0 else os.waitpid(pid, 0)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["thread", "ok"]


LEAVES_TRACES = """
import glob, os
from torch import nn

seen = sorted(glob.glob("/tmp/left-*") + glob.glob("/job/out/*"))
open("/tmp/left-behind", "w").write("x")
open("/job/out/left-behind", "w").write("x")
print("ncloud-sandbox-ready forged", flush=True)  # a fake barrier: not the nonce
if os.fork() == 0:  # a detached grandchild that would outlive the job
    os.setsid()
    if os.fork() == 0:
        import time
        time.sleep(300)
    os._exit(0)


def model(num_classes, input_shape):
    if seen:
        raise ValueError(f"saw the last job's files: {seen}")
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
"""


def test_a_recycled_sandbox_keeps_nothing_of_the_last_job_and_one_tenant_only() -> None:
    from jobs.models.specs import parse_spec
    from jobs.sandbox.check import _factory
    from jobs.sandbox.pool import WarmPool
    from jobs.sandbox.procs import tree_pids

    spec = parse_spec("traces.py", LEAVES_TRACES)
    pool = WarmPool(_factory, keep=1)
    try:
        box = pool.take(1)
        for i in range(3):  # the same sandbox each time, emptied in between
            if i:
                assert pool.take(1) is box
            box.begin(
                {"name": spec.name, "text": spec.text, "num_classes": 10, "input_shape": [1, 4]},
                1,
            )
            frame = box.recv(60)
            assert frame is not None and "ok" in frame[0], frame
            pool.give_back(box, 1)
            assert pool.kept == {1: box}
            assert set(tree_pids(box.pid())) == box._baseline  # the grandchild was killed
            assert not any((box.policy.slot / "out").iterdir())
        # Another tenant never gets it; keep=1 closes tenant 1's when tenant 2's comes back.
        other = pool.take(2)
        assert other is not box
        other.begin({"name": spec.name, "text": spec.text, "num_classes": 10,
                     "input_shape": [1, 4]}, 2)  # fmt: skip
        assert other.recv(60) is not None
        pool.give_back(other, 2)
        assert list(pool.kept) == [2] and not box.alive()
    finally:
        pool.close()
