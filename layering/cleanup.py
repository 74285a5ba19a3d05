"""`lulayer cleanup`: deployments, caches, and what the repository no longer needs."""

from __future__ import annotations

import os

from gi.repository import GLib

from lulayer.errors import SysrootError
from lulayer.fsutil import opened_dir, remove_tree_at
from lulayer.layering.deploy import remove
from lulayer.layering.layer import base_commit_of
from lulayer.layering.staged import drop as drop_staged
from lulayer.sysroot import Sysroot


def _remove_children(parent: str, keep: set[str]) -> list[str]:
    if not os.path.isdir(parent):
        return []
    with opened_dir(parent) as fd:
        gone = [n for n in os.listdir(fd) if n not in keep]
        for name in gone:
            remove_tree_at(fd, name)
        return gone


def cleanup(sysroot: Sysroot, *, pending: bool, rollback: bool, repomd: bool) -> list[str]:
    said: list[str] = []
    doomed = []
    if pending and (staged := drop_staged(sysroot)) is not None:
        said.append(f"Dropped the staged deployment of {staged.commit[:12]} (not yet written)")
    if pending and (p := sysroot.pending()) is not None:
        doomed.append(p)
    if rollback:
        seen = False
        for d in sysroot.deployments():
            if seen:
                doomed.append(d)
            seen = seen or d.booted
    if doomed:
        remove(sysroot, doomed)
        said += [f"Removed deployment {d.name}" for d in doomed]
    if repomd:
        cache = sysroot.var_dir(sysroot.booted().osname) / "cache" / "lulayer"
        if _remove_children(str(cache), set()):
            said.append(f"Removed cached metadata and packages in {cache}")
    bases = {base_commit_of(sysroot.repo, d.checksum) for d in sysroot.deployments()}
    for name in _remove_children(str(sysroot.path / "ostree" / "lulayer" / "base"), bases):
        said.append(f"Removed base checkout {name[:12]}")
    try:
        # Deployment folders no longer listed, old boot folders, unreferenced objects.
        sysroot.ostree.cleanup(None)
    except GLib.Error as e:
        raise SysrootError(f"cleaning up the sysroot failed: {e.message}") from e
    said.append("Pruned unreferenced repository objects")
    return said
