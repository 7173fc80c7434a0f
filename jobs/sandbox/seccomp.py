"""A seccomp filter for tenant code: no new namespaces, no kernel interfaces it has no use for.

Without capabilities a sandbox can still ask the kernel for a user namespace (and with it
capabilities over new namespaces), BPF programs, io_uring, perf events, keyrings or
userfaultfd: the usual ways into kernel bugs. It also gets no other process's memory
(process_vm_*) and no System V or POSIX message IPC, which would outlive its processes in
the sandbox's IPC namespace and so reach the tenant's next job in a recycled sandbox. The
entry installs this filter after it leaves root and before tenant code runs; the denied
calls fail with EPERM (clone3 with ENOSYS, so that libc falls back to clone, whose flags
the filter can read).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
RET_ALLOW, RET_ERRNO, RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000
CLONE_NEWUSER = 0x10000000
# (audit arch, {name: number}) per machine
ARCHES = {
    "x86_64": (0xC000003E, {
        "clone": 56, "clone3": 435, "unshare": 272, "setns": 308, "mount": 165,
        "umount2": 166, "pivot_root": 155, "bpf": 321, "perf_event_open": 298,
        "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "ptrace": 101,
        "kexec_load": 246, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "open_by_handle_at": 304, "fsopen": 430, "fsmount": 432, "move_mount": 429,
        "open_tree": 428, "process_vm_readv": 310, "process_vm_writev": 311, "shmget": 29,
        "semget": 64, "msgget": 68, "mq_open": 240,
    }),
    "aarch64": (0xC00000B7, {
        "clone": 220, "clone3": 435, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
        "pivot_root": 41, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "keyctl": 219, "add_key": 217, "request_key": 218, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "ptrace": 117, "kexec_load": 104,
        "init_module": 105, "finit_module": 273, "delete_module": 106,
        "open_by_handle_at": 265, "fsopen": 430, "fsmount": 432, "move_mount": 429,
        "open_tree": 428, "process_vm_readv": 270, "process_vm_writev": 271, "shmget": 194,
        "semget": 190, "msgget": 186, "mq_open": 180,
    }),
}  # fmt: skip


def _stmt(code: int, k: int) -> bytes:
    return struct.pack("HBBI", code, 0, 0, k)


def _jump(code: int, k: int, jt: int, jf: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


LD_W_ABS, JEQ_K, JSET_K, RET_K = 0x20, 0x15, 0x45, 0x06


def program(machine: str | None = None) -> bytes:
    """The filter as classic BPF: arch check, clone's flags, then a deny list."""
    arch, numbers = ARCHES[machine or platform.machine()]
    eperm, enosys = RET_ERRNO | errno.EPERM, RET_ERRNO | errno.ENOSYS
    code = [
        _stmt(LD_W_ABS, 4),  # seccomp_data.arch
        _jump(JEQ_K, arch, 1, 0),
        _stmt(RET_K, RET_KILL),  # another ABI (x32, i386): nothing runs through it
        _stmt(LD_W_ABS, 0),  # seccomp_data.nr
        _jump(JEQ_K, numbers["clone"], 0, 4),  # not clone: on to clone3
        _stmt(LD_W_ABS, 16),  # args[0], the flags (low 32 bits)
        _jump(JSET_K, CLONE_NEWUSER, 0, 1),
        _stmt(RET_K, eperm),
        _stmt(RET_K, RET_ALLOW),
        _jump(JEQ_K, numbers["clone3"], 0, 1),
        _stmt(RET_K, enosys),
    ]
    for name, nr in numbers.items():
        if name not in ("clone", "clone3"):
            code += [_jump(JEQ_K, nr, 0, 1), _stmt(RET_K, eperm)]
    code.append(_stmt(RET_K, RET_ALLOW))
    return b"".join(code)


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Apply the filter to this process and all it starts; SystemExit if that fails."""
    try:
        code = program()
    except KeyError:
        raise SystemExit(f"sandbox: no seccomp filter for {platform.machine()}") from None
    buffer = ctypes.create_string_buffer(code)
    prog = _Prog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise SystemExit(f"sandbox: seccomp failed ({ctypes.get_errno()}); refusing to run")
