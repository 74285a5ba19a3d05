"""Deploying a commit for the next boot, through libostree.

The new deployment goes first in boot order; the booted one stays (it is the
rollback target) and so does the rollback it had, as rpm-ostree keeps them.
"""

from __future__ import annotations

from contextlib import nullcontext

from gi.repository import GLib, OSTree

from lulayer.apply.etc import fix_merged_etc, read_added
from lulayer.apply.live import drop_stale_backing
from lulayer.errors import SysrootError
from lulayer.linux import CAP_SYS_ADMIN, without_capability
from lulayer.mounts import MountNamespace, mount_at, unmount
from lulayer.run import run_in_child
from lulayer.sysroot import Deployment, Origin, Sysroot, deployment_name

# rpm-ostree keeps the base commit of every layered deployment under rpmostree/base/N, so that no
# prune (its own, `ostree admin`'s, bootc's) drops a base whose ref or image has moved on; it
# rewrites the whole set after each change of the deployment list (rust/src/daemon.rs
# generate_baselayer_refs, from src/daemon/rpmostree-sysroot-core.cxx), and ostree-ext keeps the
# image layers those refs need (ostree-ext/src/container/store.rs RPMOSTREE_BASE_REFS). Same refs,
# same rule: each tool's rewrite covers the other's deployments.
BASE_REF_PREFIX = "rpmostree/base"


def write_base_refs(sysroot: Sysroot) -> None:
    """Point rpmostree/base/0..N at the base commits of the layered deployments, and nothing else."""
    from lulayer.layering.layer import base_commit_of

    repo = sysroot.repo
    try:
        # A base already gone cannot be kept, and a ref to it would fail every prune.
        bases = [base for d in sysroot.ostree_deployments()
                 if (base := base_commit_of(repo, d.get_csum())) != d.get_csum()
                 and repo.has_object(OSTree.ObjectType.COMMIT, base, None)[1]]
        _, old = repo.list_refs_ext(BASE_REF_PREFIX, OSTree.RepoListRefsExtFlags.NONE, None)
        wanted = {f"{BASE_REF_PREFIX}/{i}": base for i, base in enumerate(bases)}
        if dict(old) == wanted:
            return
        repo.prepare_transaction(None)
        try:
            for ref in old:
                repo.transaction_set_ref(None, ref, None)
            for ref, base in wanted.items():
                repo.transaction_set_ref(None, ref, base)
            repo.commit_transaction(None)
        except GLib.Error:
            repo.abort_transaction(None)
            raise
    except GLib.Error as e:
        raise SysrootError(f"keeping the base commits of layered deployments failed: {e.message}") from e


def _write(sysroot: Sysroot, order: list[OSTree.Deployment]) -> int:
    """Write the deployment list; returns the bytes freed in the backing folders of the
    deployments it dropped (drop_stale_backing)."""
    opts = OSTree.SysrootWriteDeploymentsOpts()
    # Pruning the repository walks every reachable object; `lulayer cleanup` does it.
    opts.do_postclean = False
    try:
        # libostree ends a deployment write with an FIFREEZE/FITHAW cycle on the file system
        # holding /boot. On a folder sysroot that is the host's own, which a freeze stalls for
        # everyone; without CAP_SYS_ADMIN the ioctl fails with EPERM and libostree syncfs()es.
        with without_capability(CAP_SYS_ADMIN) if sysroot.folder else nullcontext():
            sysroot.ostree.write_deployments_with_options(order, opts, None)
        sysroot.ostree.prepare_cleanup(None)
    except GLib.Error as e:
        raise SysrootError(f"writing the deployment list failed: {e.message}") from e
    sysroot.reload()
    write_base_refs(sysroot)
    return drop_stale_backing(sysroot)


def deploy(sysroot: Sysroot, commit: str, origin: Origin, merge: Deployment) -> Deployment:
    """Deploy commit with origin as the default for the next boot, its /etc merged from merge's;
    return it.

    libostree merges merge's /etc against merge's /usr/etc as it finds it under the sysroot. On
    a folder sysroot a live overlay is mounted on that very /usr (on a host a mount on /usr may
    propagate there too), and the merge would take every /etc file a live update's /usr/etc
    changes for the administrator's. Then the deployment is written from a child with its own
    mount namespace, where merge's /usr is what its commit holds, as on the next boot, through
    a sysroot opened there.
    """
    usr = merge.path / "usr"
    if mount_at(usr) is None:
        _deploy(sysroot, commit, origin, merge)
    else:
        def pristine() -> None:
            for _ in range(16):  # the overlay, a read-only bind on it, ...: down to the folder
                if mount_at(usr) is None:
                    break
                unmount(usr, lazy=True)
            # Opened again: directories opened before the unshare still lead into the mounts
            # of the namespace they were opened in.
            _deploy(Sysroot(sysroot.path if sysroot.folder else None), commit, origin, merge)

        run_in_child("lulayer-deploy", pristine, mount_namespace=MountNamespace.PRIVATE)
        sysroot.reload()
        drop_stale_backing(sysroot)  # here too: the child did not see this namespace's mounts
    return sysroot.deployments()[0]


def _deploy(sysroot: Sysroot, commit: str, origin: Origin, merge: Deployment) -> None:
    booted = sysroot.booted()
    rollback = sysroot.rollback()
    live_etc = read_added(sysroot, merge)  # read first: a corrupt record refuses before anything is written
    try:
        _, new = sysroot.ostree.deploy_tree(
            merge.osname, commit, origin.to_keyfile(), sysroot.ostree_deployment(merge), None, None
        )
    except GLib.Error as e:
        raise SysrootError(f"deploying {commit[:12]} failed: {e.message}") from e
    # The /etc files a live apply wrote into merge's /etc and nobody changed are the package's.
    fix_merged_etc(sysroot.path / sysroot.ostree.get_deployment_dirpath(new), live_etc)
    order = [new, sysroot.ostree_deployment(booted)]
    if rollback is not None:
        order.append(sysroot.ostree_deployment(rollback))
    _write(sysroot, order)


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
        order = [b, *[d for d in deps if deployment_name(d) != deployment_name(b)]]
    _write(sysroot, order)
    return sysroot.deployments()[0]


def remove(sysroot: Sysroot, doomed: list[Deployment]) -> int:
    """Remove the doomed deployments; returns the bytes freed in their backing folders."""
    names = {d.name for d in doomed}
    keep = [d for d in sysroot.ostree_deployments() if deployment_name(d) not in names]
    return _write(sysroot, keep)
