"""Deploying a commit for the next boot, through libostree.

The new deployment goes first in boot order; the booted one stays (it is the
rollback target) and so does the rollback it had, as rpm-ostree keeps them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from gi.repository import GLib, OSTree

from lulayer.errors import SysrootError
from lulayer.sysroot import Deployment, Origin, Sysroot

_CAP_SYS_ADMIN = 21
_CAPS_V3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextmanager
def _without_sys_admin() -> Iterator[None]:
    """Drop CAP_SYS_ADMIN from this thread's effective set for the block, then raise it again.

    libostree ends a deployment write with an FIFREEZE/FITHAW cycle on the file
    system holding /boot. On a folder sysroot that is the host's own file
    system, which a freeze stalls for everyone; without the capability the
    ioctl fails with EPERM and libostree falls back to syncfs.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(_CAPS_V3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        yield
        return
    saved = data[0].effective
    data[0].effective = saved & ~(1 << _CAP_SYS_ADMIN)
    libc.capset(ctypes.byref(header), data)
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)


def _write(sysroot: Sysroot, order: list[OSTree.Deployment]) -> None:
    opts = OSTree.SysrootWriteDeploymentsOpts()
    # Pruning the repository walks every reachable object; `lulayer cleanup` does it.
    opts.do_postclean = False
    try:
        with _without_sys_admin() if sysroot.folder else nullcontext():
            sysroot.ostree.write_deployments_with_options(order, opts, None)
        sysroot.ostree.prepare_cleanup(None)
    except GLib.Error as e:
        raise SysrootError(f"writing the deployment list failed: {e.message}") from e
    sysroot.reload()


def deploy(sysroot: Sysroot, commit: str, origin: Origin, merge: Deployment) -> Deployment:
    """Deploy commit with origin as the default for the next boot; return it."""
    booted = sysroot.booted()
    rollback = sysroot.rollback()
    try:
        _, new = sysroot.ostree.deploy_tree(
            merge.osname, commit, origin.to_keyfile(), sysroot.ostree_deployment(merge), None, None
        )
    except GLib.Error as e:
        raise SysrootError(f"deploying {commit[:12]} failed: {e.message}") from e
    order = [new, sysroot.ostree_deployment(booted)]
    if rollback is not None:
        order.append(sysroot.ostree_deployment(rollback))
    _write(sysroot, order)
    return sysroot.deployments()[0]


def rollback(sysroot: Sysroot) -> Deployment:
    """Make the rollback target the default (or, with a pending one, the booted again)."""
    deps = sysroot.ostree_deployments()
    booted = sysroot.booted()
    if deps and sysroot.deployments()[0].booted:
        if len(deps) < 2:
            raise SysrootError("there is no rollback deployment", hint="nothing to roll back to")
        order = [deps[1], deps[0], *deps[2:]]
    else:
        b = sysroot.ostree_deployment(booted)
        order = [b, *[d for d in deps if _key(d) != _key(b)]]
    _write(sysroot, order)
    return sysroot.deployments()[0]


def remove(sysroot: Sysroot, doomed: list[Deployment]) -> None:
    names = {d.name for d in doomed}
    keep = [d for d in sysroot.ostree_deployments() if _key(d) not in names]
    _write(sysroot, keep)


def _key(d: OSTree.Deployment) -> str:
    return f"{d.get_csum()}.{d.get_deployserial()}"
