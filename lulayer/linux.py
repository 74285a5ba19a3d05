"""The Linux system calls Python lacks: mount, umount2, unshare, setns, renameat2, syncfs, prctl,
capget/capset.

libc is loaded once and every function's argument types are declared once.
A failure raises OSError with the errno and the path it concerns; the caller
turns it into a LulayerError that says what it was doing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

# mount(2)
MS_RDONLY: Final = 1
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_NOEXEC: Final = 8
MS_REMOUNT: Final = 32
MS_NOATIME: Final = 1024
MS_NODIRATIME: Final = 2048
MS_BIND: Final = 4096
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 1 << 18
MS_SHARED: Final = 1 << 20
MS_SLAVE: Final = 1 << 19
MS_RELATIME: Final = 1 << 21
MS_STRICTATIME: Final = 1 << 24
# umount2(2)
MNT_DETACH: Final = 2
UMOUNT_NOFOLLOW: Final = 8
# unshare(2), setns(2)
CLONE_NEWNS: Final = 0x00020000
# renameat2(2)
RENAME_NOREPLACE: Final = 1 << 0
RENAME_EXCHANGE: Final = 1 << 1
# prctl(2)
PR_SET_PDEATHSIG: Final = 1
PR_SET_NAME: Final = 15
# capabilities(7)
CAP_SYS_ADMIN: Final = 21
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
# Raw syscall numbers, for a libc without the renameat2 wrapper (glibc < 2.28, old musl).
_SYS_RENAMEAT2: Final = {"x86_64": 316, "aarch64": 276}


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _load() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    c_char_p, c_int, c_ulong, c_uint = ctypes.c_char_p, ctypes.c_int, ctypes.c_ulong, ctypes.c_uint
    libc.mount.argtypes = [c_char_p, c_char_p, c_char_p, c_ulong, c_char_p]
    libc.mount.restype = c_int
    libc.umount2.argtypes = [c_char_p, c_int]
    libc.umount2.restype = c_int
    libc.unshare.argtypes = [c_int]
    libc.unshare.restype = c_int
    libc.setns.argtypes = [c_int, c_int]
    libc.setns.restype = c_int
    libc.prctl.argtypes = [c_int, c_ulong, c_ulong, c_ulong, c_ulong]
    libc.prctl.restype = c_int
    libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
    libc.capget.restype = c_int
    libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
    libc.capset.restype = c_int
    libc.syncfs.argtypes = [c_int]
    libc.syncfs.restype = c_int
    libc.syscall.restype = ctypes.c_long
    if hasattr(libc, "renameat2"):
        libc.renameat2.argtypes = [c_int, c_char_p, c_int, c_char_p, c_uint]
        libc.renameat2.restype = c_int
    return libc


_libc: Final = _load()


def _check(result: int, *paths: str | bytes | None) -> None:
    if result != 0:
        err = ctypes.get_errno()
        names = [os.fsdecode(p) for p in paths if p is not None]
        raise OSError(err, os.strerror(err), *names[:1], None, *names[1:2])


def _arg(s: str | os.PathLike[str] | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str | os.PathLike[str], fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2)."""
    t = os.fsencode(target)
    _check(_libc.mount(_arg(source), t, _arg(fstype), flags, _arg(data)), t)


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    """umount2(2)."""
    t = os.fsencode(target)
    _check(_libc.umount2(t, flags), t)


def unshare(flags: int) -> None:
    """unshare(2)."""
    _check(_libc.unshare(flags))


def setns(fd: int, nstype: int) -> None:
    """setns(2): join the namespace fd refers to (a mount namespace: single-threaded callers only)."""
    _check(_libc.setns(fd, nstype))


def syncfs(fd: int) -> None:
    """syncfs(2): write out the file system fd is on (an overlay's: its upper layer's), and
    nothing else, as sync(2) would."""
    _check(_libc.syncfs(fd))


def set_pdeathsig(sig: int) -> None:
    """Be sent sig when the parent thread exits."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0))


def set_name(name: str) -> None:
    """This thread's name in /proc/PID/comm (15 bytes at most)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(PR_SET_NAME, ctypes.cast(buf, ctypes.c_void_p).value or 0, 0, 0, 0))


def renameat2(olddirfd: int, oldname: str | bytes, newdirfd: int, newname: str | bytes, flags: int) -> None:
    """renameat2(2): RENAME_EXCHANGE swaps two entries atomically, RENAME_NOREPLACE refuses
    to replace an existing target (EEXIST)."""
    old, new = os.fsencode(oldname), os.fsencode(newname)
    call = _libc.renameat2 if hasattr(_libc, "renameat2") else _raw_renameat2
    _check(call(olddirfd, old, newdirfd, new, flags), old, new)


def _raw_renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> int:
    """renameat2 through syscall(2), for a libc without the wrapper (glibc < 2.28)."""
    nr = _SYS_RENAMEAT2.get(platform.machine())
    if nr is None:
        ctypes.set_errno(errno.ENOSYS)
        return -1
    return int(_libc.syscall(ctypes.c_long(nr), ctypes.c_int(olddirfd), ctypes.c_char_p(old),
                             ctypes.c_int(newdirfd), ctypes.c_char_p(new), ctypes.c_uint(flags)))


@contextmanager
def without_capability(cap: int) -> Iterator[None]:
    """Drop cap from this thread's effective set for the block, then raise it again.

    Where the capabilities cannot be read, the block runs as it is."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        yield
        return
    saved = data[0].effective
    data[0].effective = saved & ~(1 << cap)
    _check(_libc.capset(ctypes.byref(header), data))
    try:
        yield
    finally:
        data[0].effective = saved
        _check(_libc.capset(ctypes.byref(header), data))
