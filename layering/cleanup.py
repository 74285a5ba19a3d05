"""`lulayer cleanup`: deployments, caches, and what the repository no longer needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gi.repository import GLib

from lulayer.errors import SysrootError
from lulayer.fsutil import opened_dir, remove_tree_at
from lulayer.layering import localpkg
from lulayer.layering.deploy import remove, write_base_refs
from lulayer.layering.layer import base_commit_of
from lulayer.layering.staged import drop as drop_staged
from lulayer.layering.staged import read as read_staged
from lulayer.sysroot import Origin, Sysroot


def _remove_children(parent: str, keep: set[str]) -> list[str]:
    if not os.path.isdir(parent):
        return []
    with opened_dir(parent) as fd:
        gone = [n for n in os.listdir(fd) if n not in keep]
        for name in gone:
            remove_tree_at(fd, name)
        return gone


@dataclass(frozen=True)
class CleanupResult:
    dropped_staged: str | None = None  # the commit of a staged deployment dropped before it was written
    removed_deployments: tuple[str, ...] = ()  # CHECKSUM.SERIAL
    removed_cache: Path | None = None  # the repository cache, when it held anything
    removed_base_checkouts: tuple[str, ...] = ()  # base commits no deployment needs any more


def cleanup(sysroot: Sysroot, *, pending: bool, rollback: bool, repomd: bool) -> CleanupResult:
    dropped = drop_staged(sysroot) if pending else None
    doomed = []
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
    cache = sysroot.cache_dir
    removed_cache = cache if repomd and _remove_children(str(cache), set()) else None
    bases = {base_commit_of(sysroot.repo, d.checksum) for d in sysroot.deployments()}
    removed_bases = _remove_children(str(sysroot.base_checkouts), bases)
    # Before the prune: a layered deployment's base may be held by nothing else (deploy.py), and
    # a local package by nothing but its ref (localpkg.py).
    write_base_refs(sysroot)
    staged = read_staged(sysroot)
    origins = [*(d.origin for d in sysroot.deployments()),
               *((Origin.from_data(staged.origin),) if staged is not None else ())]
    localpkg.drop_unused(sysroot.repo, origins)
    _remove_children(str(cache / localpkg.CACHE_DIR), {localpkg.cached_name(e) for o in origins
                                                       for e in o.requested_local})
    try:
        # Deployment folders no longer listed, old boot folders, unreferenced objects.
        sysroot.ostree.cleanup(None)
    except GLib.Error as e:
        raise SysrootError(f"cleaning up the sysroot failed: {e.message}") from e
    return CleanupResult(
        dropped_staged=dropped.commit if dropped else None,
        removed_deployments=tuple(d.name for d in doomed),
        removed_cache=removed_cache,
        removed_base_checkouts=tuple(removed_bases),
    )
