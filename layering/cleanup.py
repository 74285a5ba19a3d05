"""`lulayer cleanup`: deployments, caches, and what the repository no longer needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gi.repository import GLib

from lulayer.apply.live import drop_stale_backing
from lulayer.errors import SysrootError
from lulayer.fsutil import opened_dir, remove_tree_at, tree_usage
from lulayer.layering import localpkg
from lulayer.layering.deploy import remove, write_base_refs
from lulayer.layering.layer import base_commit_of
from lulayer.layering.staged import drop as drop_staged
from lulayer.layering.staged import read as read_staged
from lulayer.sysroot import Origin, Sysroot


def _remove_children(parent: str, keep: set[str]) -> tuple[list[str], int]:
    """Remove parent's entries but keep; returns their names and the bytes that freed."""
    if not os.path.isdir(parent):
        return [], 0
    with opened_dir(parent) as fd:
        gone = [n for n in os.listdir(fd) if n not in keep]
        freed = sum(tree_usage(Path(parent) / n) for n in gone)
        for name in gone:
            remove_tree_at(fd, name)
        return gone, freed


@dataclass(frozen=True)
class CleanupResult:
    dropped_staged: str | None = None  # the commit of a staged deployment dropped before it was written
    removed_deployments: tuple[str, ...] = ()  # CHECKSUM.SERIAL
    removed_cache: Path | None = None  # the repository cache, when it held anything
    removed_base_checkouts: tuple[str, ...] = ()  # base commits no deployment needs any more
    freed_live: int = 0  # bytes: the live layers of deployments that are gone (their backing folders)
    freed_cache: int = 0  # bytes: repository metadata and packages, base checkouts
    freed_repo: int = 0  # bytes: repository objects pruned, with the deployments removed

    @property
    def freed(self) -> int:
        """The bytes of disk this cleanup gave back."""
        return self.freed_live + self.freed_cache + self.freed_repo


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
    freed_live = remove(sysroot, doomed) if doomed else 0
    # Also those of deployments another tool removed (`ostree admin undeploy`, rpm-ostree).
    freed_live += drop_stale_backing(sysroot)
    cache = sysroot.cache_dir
    cache_gone, freed_cache = _remove_children(str(cache), set()) if repomd else ([], 0)
    bases = {base_commit_of(sysroot.repo, d.checksum) for d in sysroot.deployments()}
    # A base checkout's files are hardlinks to repository objects: the prune frees what it can.
    removed_bases, _ = _remove_children(str(sysroot.base_checkouts), bases)
    objects = sysroot.path / "ostree" / "repo" / "objects"
    before = tree_usage(objects, linked_elsewhere=True)
    # Before the prune: a layered deployment's base may be held by nothing else (deploy.py), and
    # a local package by nothing but its ref (localpkg.py).
    write_base_refs(sysroot)
    staged = read_staged(sysroot)
    origins = [*(d.origin for d in sysroot.deployments()),
               *((Origin.from_data(staged.origin),) if staged is not None else ())]
    localpkg.drop_unused(sysroot.repo, origins)
    _remove_children(str(cache / localpkg.CACHE_DIR), {localpkg.cached_name(e) for o in origins
                                                       for e in localpkg.stored_entries(o)})
    try:
        # Deployment folders no longer listed, old boot folders, unreferenced objects.
        sysroot.ostree.cleanup(None)
    except GLib.Error as e:
        raise SysrootError(f"cleaning up the sysroot failed: {e.message}") from e
    return CleanupResult(
        dropped_staged=dropped.commit if dropped else None,
        removed_deployments=tuple(d.name for d in doomed),
        removed_cache=cache if cache_gone else None,
        removed_base_checkouts=tuple(removed_bases),
        freed_live=freed_live,
        freed_cache=freed_cache,
        freed_repo=max(0, before - tree_usage(objects, linked_elsewhere=True)),
    )
