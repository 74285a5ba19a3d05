"""One operation at a time per sysroot.

The lock is libostree's own (an OFD lock on ``ostree/lock``), the one that
``ostree admin`` and rpm-ostreed take, so lulayer serializes with them too.
OFD locks carry no pid, so the holder is named in a file beside our run state.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from lulayer.sysroot import Sysroot


def _owner_file(sysroot: Sysroot) -> str:
    return str(sysroot.run_dir / "lulayer" / "lock.owner")


def lock_holder(sysroot: Sysroot) -> str:
    """Who holds the sysroot lock, as best we can tell."""
    try:
        with open(_owner_file(sysroot)) as f:
            pid, _, cmd = f.read().partition(" ")
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            return f"lulayer (pid {pid}: {cmd.strip()})"
    except FileNotFoundError:
        pass
    return "another process (ostree admin or rpm-ostreed)"


@contextmanager
def sysroot_lock(sysroot: Sysroot, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the sysroot lock for the block; wait for it, saying who holds it."""
    acquired = sysroot.ostree.try_lock()[1]
    if not acquired:
        if on_wait:
            on_wait(f"waiting for the sysroot lock, held by {lock_holder(sysroot)}")
        sysroot.ostree.lock()
    owner = _owner_file(sysroot)
    try:
        os.makedirs(os.path.dirname(owner), exist_ok=True)
        with open(owner + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {' '.join(sys.argv)}\n")
        os.rename(owner + ".tmp", owner)
        # Another process may have changed the deployments while we waited.
        sysroot.reload()
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(owner)
        sysroot.ostree.unlock()
