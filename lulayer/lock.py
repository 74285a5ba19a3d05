"""One operation at a time per sysroot.

The lock is libostree's own (an OFD lock on ``ostree/lock``), the one that
``ostree admin`` and rpm-ostreed take, so lulayer serializes with them too.
OFD locks carry no pid, so the holder is named in a file beside our run state.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from lulayer import signals
from lulayer.fsutil import opened_dir, write_record
from lulayer.sysroot import Sysroot

LOCK_POLL = 0.05  # seconds between tries while another process holds the lock


def _lulayer_holder(sysroot: Sysroot) -> tuple[str, str] | None:
    """The pid and command of the lulayer process that holds the lock, if one does."""
    try:
        with open(sysroot.lock_owner) as f:
            pid, _, cmd = f.read().partition(" ")
    except FileNotFoundError:
        return None
    if pid.isdigit() and _alive(int(pid)):
        return pid, cmd.strip()
    return None


def _alive(pid: int) -> bool:
    """Whether pid runs (a killed process nobody has reaped yet is a zombie: not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def lulayer_holder(sysroot: Sysroot) -> tuple[str, str] | None:
    """The pid and command line of the lulayer process holding the sysroot lock, if one does."""
    return _lulayer_holder(sysroot)


def lock_holder(sysroot: Sysroot) -> str:
    """Who holds the sysroot lock, as best we can tell."""
    holder = _lulayer_holder(sysroot)
    if holder is not None:
        return f"lulayer (pid {holder[0]}: {holder[1]})"
    return "another process (ostree admin or rpm-ostreed)"


def held_for(sysroot: Sysroot, what: str) -> bool:
    """Whether a lulayer process holds the lock, named by inherited_lock(sysroot, what)."""
    holder = _lulayer_holder(sysroot)
    return holder is not None and holder[1] == what


def _write_owner(sysroot: Sysroot, what: str) -> None:
    owner = sysroot.lock_owner
    owner.parent.mkdir(parents=True, exist_ok=True)
    with opened_dir(owner.parent) as fd:
        write_record(fd, owner.name, f"{os.getpid()} {what}\n".encode(), sync_dir=False)


def _clear_owner(sysroot: Sysroot) -> None:
    with suppress(FileNotFoundError):
        os.unlink(sysroot.lock_owner)


@contextmanager
def sysroot_lock(sysroot: Sysroot, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the sysroot lock for the block; wait for it, saying who holds it. The wait
    polls, so that Ctrl-C stops it (libostree's blocking wait retries through signals)."""
    acquired = sysroot.ostree.try_lock()[1]
    if not acquired and on_wait:
        on_wait(f"waiting for the sysroot lock, held by {lock_holder(sysroot)}")
    while not acquired:
        signals.checkpoint()
        time.sleep(LOCK_POLL)
        acquired = sysroot.ostree.try_lock()[1]
    try:
        _write_owner(sysroot, " ".join(sys.argv))
        # Another process may have changed the deployments while we waited.
        sysroot.reload()
        yield
    finally:
        _clear_owner(sysroot)
        sysroot.ostree.unlock()


@contextmanager
def inherited_lock(sysroot: Sysroot, what: str) -> Iterator[None]:
    """In a forked child that shares the lock of its parent (an OFD lock belongs to the
    open file, which the child shares): name it the holder for the block. The lock goes
    when the last process holding the file exits."""
    try:
        _write_owner(sysroot, what)
        yield
    finally:
        _clear_owner(sysroot)
