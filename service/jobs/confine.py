"""File-system and socket confinement of the conversion process: Landlock and a seccomp filter, through raw
syscalls (ctypes), applied by the process to itself before it reads the model.

* **Landlock** (Linux ≥ 5.13; what each ABI adds is used when the kernel has it): the process keeps full access to
  its job folder (read, write, create, delete) and read/execute access to what Python and its libraries need
  (the interpreter's prefixes and ``sys.path``, ``/usr``, ``/lib*``, a few ``/etc`` files, ``/proc/self``, CPU
  topology under ``/sys``, ``/dev/null``/``urandom``, GPU device nodes if present). Everything else — other jobs'
  files, the storage, the database file, ``/home``, other processes' ``/proc`` — cannot be opened, listed,
  created or written. ABI ≥ 4 also forbids TCP bind/connect; ABI ≥ 6 forbids signalling processes outside the
  sandbox and connecting to abstract Unix sockets.
* **seccomp** (x86-64 and aarch64): ``socket(2)`` fails with ``EPERM`` for every address family, so no network
  and no Unix-socket connection (a database's or Docker's local socket) whatever Landlock's ABI; x32 syscalls are
  refused.

Both are allowed by Docker's default seccomp profile (Landlock's three syscalls since Docker 23, seccomp and
``prctl`` always), need no privilege and survive ``execve``; they only ever restrict further.

It does *not* hide what is readable under the allowed read-only folders (the Python installation, the package's
own source folder — and the *names*, not the contents, of folders below the source folder, which matters only
when the data folder lies inside a source checkout), nor does it limit CPU or memory (the sandbox's rlimits do).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Confinement", "confine", "landlock_abi", "seccomp_supported"]

_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture since Linux 5.13
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# Landlock file-system access rights, and the ABI that introduced each.
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_REMOVE_DIR, _REMOVE_FILE, _MAKE_CHAR, _MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_MAKE_REG, _MAKE_SOCK, _MAKE_FIFO, _MAKE_BLOCK, _MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV  # the rights a rule on a file may hold
_NET_TCP = 0b11  # BIND_TCP | CONNECT_TCP (ABI 4)
_SCOPED = 0b11  # ABSTRACT_UNIX_SOCKET | SIGNAL (ABI 6)

_RO = _EXECUTE | _READ_FILE | _READ_DIR
_DEVICE = _READ_FILE | _WRITE_FILE | _IOCTL_DEV

# seccomp
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_AUDIT_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}  # arch token, socket(2) number
_X32_BIT = 0x40000000

_READ_ONLY_SYSTEM = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/opt/conda",
                     "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
                     "/etc/group", "/etc/nsswitch.conf", "/etc/os-release", "/etc/alternatives",
                     "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/self",
                     "/sys/devices/system/cpu", "/sys/fs/cgroup", "/dev/urandom", "/dev/random",
                     "/proc/driver/nvidia", "/proc/sys/vm/overcommit_memory", "/sys/bus/pci", "/sys/devices",
                     "/sys/module/nvidia")  # the last four: what the CUDA driver reads (untested without a GPU)
_DEVICES = ("/dev/null", "/dev/zero", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
            "/dev/nvidia-modeset", "/dev/dri")


@dataclass(frozen=True)
class Confinement:
    """What ``confine`` put in place: the Landlock ABI enforced (0: none) and whether sockets are refused."""

    landlock_abi: int
    seccomp: bool

    @property
    def files_confined(self) -> bool:
        """Whether the process can reach only its job folder and read-only system paths."""
        return self.landlock_abi > 0


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none, or not Linux)."""
    if sys.platform != "linux":
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                           ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def seccomp_supported() -> bool:
    """Whether ``confine`` can install its socket filter on this machine (Linux on x86-64 or aarch64)."""
    return sys.platform == "linux" and platform.machine() in _AUDIT_ARCH


def confine(workdir: Path, read_only: Iterable[str | Path] = (), read_write: Iterable[str | Path] = ()) -> Confinement:
    """Confine this process (and what it starts) for good: ``workdir`` and ``read_write`` read-write, the paths
    Python needs and ``read_only`` read-only, no sockets. ``PR_SET_NO_NEW_PRIVS`` must already be set. Applies
    what the kernel offers and reports it; never raises for a missing feature.

    Raises:
        OSError: the kernel offers Landlock but refused the ruleset (a bug, not a missing feature).
    """
    abi = landlock_abi()
    if abi:
        _landlock(abi, [Path(workdir), *map(Path, read_write)], [*_python_paths(), *_READ_ONLY_SYSTEM, *read_only])
    return Confinement(landlock_abi=abi, seccomp=_seccomp_no_sockets())


def _python_paths() -> list[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(p for p in sys.path if p)
    return sorted(paths)


def _landlock(abi: int, workdirs: list[Path], read_only: list[str | Path]) -> None:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fs = _FS_BY_ABI[max(k for k in _FS_BY_ABI if k <= abi)]
    if abi >= 6:
        attr = struct.pack("=QQQ", fs, _NET_TCP, _SCOPED)
    elif abi >= 4:
        attr = struct.pack("=QQ", fs, _NET_TCP)
    else:
        attr = struct.pack("=Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), buf, ctypes.c_size_t(len(attr)),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        raise _oserror("landlock_create_ruleset")
    try:
        # No device nodes, FIFOs or sockets made even in the job folder.
        for workdir in workdirs:
            _allow(libc, ruleset, workdir, fs & ~(_MAKE_CHAR | _MAKE_BLOCK | _MAKE_FIFO | _MAKE_SOCK))
        for path in read_only:
            _allow(libc, ruleset, path, _RO, optional=True)
        for path in _DEVICES:
            _allow(libc, ruleset, path, (_DEVICE | _READ_DIR) & fs, optional=True)
        for entry in _glob_nvidia():
            _allow(libc, ruleset, entry, _DEVICE & fs, optional=True)
        if libc.syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            raise _oserror("landlock_restrict_self")
    finally:
        os.close(ruleset)


def _glob_nvidia() -> list[str]:
    try:
        return [f"/dev/{n}" for n in os.listdir("/dev") if n.startswith("nvidia") and n[6:].isdigit()]
    except OSError:
        return []


def _allow(libc: ctypes.CDLL, ruleset: int, path: str | Path, access: int, *, optional: bool = False) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        if optional:
            return
        raise
    try:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            access &= _FILE_RIGHTS
        rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
        if libc.syscall(ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                        ctypes.c_int(_RULE_PATH_BENEATH), rule, ctypes.c_uint32(0)) < 0:
            raise _oserror(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def _seccomp_no_sockets() -> bool:
    if not seccomp_supported():
        return False
    arch, socket_nr = _AUDIT_ARCH[platform.machine()]
    # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}; a classic BPF program over struct seccomp_data.
    ld_w_abs, jeq_k, jge_k, ret_k = 0x20, 0x15, 0x35, 0x06
    eperm = _SECCOMP_RET_ERRNO | errno.EPERM
    program = [
        (ld_w_abs, 0, 0, 4),  # A = seccomp_data.arch
        (jeq_k, 1, 0, arch),  # our architecture: go on; else refuse
        (ret_k, 0, 0, eperm),
        (ld_w_abs, 0, 0, 0),  # A = seccomp_data.nr
        (jge_k, 0, 1, _X32_BIT),  # an x32 syscall: refuse
        (ret_k, 0, 0, eperm),
        (jeq_k, 0, 1, socket_nr),  # socket(2): refuse
        (ret_k, 0, 0, eperm),
        (ret_k, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    filters = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(filters, len(filters))

    class _SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _SockFprog(len(program), ctypes.cast(buf, ctypes.c_void_p))
    libc = _libc()
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0


def _oserror(call: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{call}: {os.strerror(code)}")
