"""Compose a layered tree: the base commit plus packages, committed to the repository.

The rpm transaction runs on an overlayfs whose lower layer is a checkout of
the base commit and whose upper layer is a scratch folder. The overlay is
what keeps the OSTree repository safe: the checkout's files are hardlinks to
repository objects, and nothing rpm or a scriptlet does can write through one
(a write copies the file up first). The upper layer is then exactly the
change, and the new commit is the base commit's tree with the upper layer
written over it: the cost follows the packages, not the size of the base.

The transaction runs in a forked child with a mount namespace of its own,
so its mounts vanish with it, even when it is killed.
"""

from __future__ import annotations

import os
import stat
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from lulayer.errors import ComposeError, LulayerError  # noqa: E402
from lulayer.fsutil import opened_dir, remove_path, remove_tree_at  # noqa: E402
from lulayer.linux import MS_BIND  # noqa: E402
from lulayer.mounts import mount, mount_overlay  # noqa: E402
from lulayer.rpmdb.model import Package  # noqa: E402
from lulayer.rpmdb.transaction import install_rpms, make_readonly_safe  # noqa: E402
from lulayer.run import run_in_child  # noqa: E402

SCRATCH_PREFIX = "lulayer-compose-"
# What an image commit never carries from a package's payload: /var is the
# machine's (ostree keeps it per OS), the rest are API file systems.
DROPPED_TOP = frozenset({"var", "run", "tmp", "proc", "sys", "dev", "boot", "sysroot"})
# The root's upper layer skips these and /etc, which has an upper layer of its own (-> /usr/etc).
_SKIPPED_TOP = DROPPED_TOP | {"etc"}
_OVERLAY_XATTR_PREFIX = "trusted.overlay."
_SQLITE_RUNTIME = ("-shm", "-wal", "-journal")


@dataclass(frozen=True)
class ComposeRequest:
    base_commit: str
    base_root: Path  # a checkout of base_commit (read-only lower layer)
    dbpath: PurePosixPath
    rpms: tuple[Path, ...]
    packages: tuple[Package, ...]  # what rpms hold, for the commit metadata
    requested: tuple[str, ...]


def clean_stale_scratch(tmp: Path) -> None:
    """Remove what a killed compose left in tmp (the caller holds the sysroot lock)."""
    if not tmp.is_dir():
        return
    with opened_dir(tmp) as fd:
        for name in os.listdir(fd):
            if name.startswith(SCRATCH_PREFIX):
                remove_tree_at(fd, name)


def compose(repo: OSTree.Repo, scratch_dir: Path, req: ComposeRequest) -> str:
    """Install req.rpms onto the base commit, working in scratch_dir (on the repository's
    file system); return the new commit's checksum."""
    scratch = scratch_dir / f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"
    dirs = {k: scratch / k for k in ("upper-root", "work-root", "upper-etc", "work-etc", "merged")}
    for d in dirs.values():
        d.mkdir(parents=True)
    try:
        try:
            run_in_child("lulayer-compose", lambda: _transaction(req, dirs), new_mount_namespace=True)
        except LulayerError as e:
            raise ComposeError(f"composing the new tree failed: {e.message}", hint=e.hint) from e
        return _commit_upper(repo, req, dirs["upper-root"], dirs["upper-etc"])
    finally:
        remove_path(scratch)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _apply_removals(mtree: OSTree.MutableTree, upper: Path, top_level: bool) -> None:
    """Carry the overlay's whiteouts and opaque directories into mtree."""
    with os.scandir(upper) as it:
        for entry in it:
            if top_level and entry.name in _SKIPPED_TOP:
                continue
            st = entry.stat(follow_symlinks=False)
            if _is_whiteout(st):
                mtree.remove(entry.name, True)
            elif stat.S_ISDIR(st.st_mode):
                if _is_opaque(Path(entry.path)):
                    mtree.remove(entry.name, True)
                    continue
                try:
                    _, _, sub = mtree.lookup(entry.name)
                except GLib.Error:  # a directory new in the upper layer
                    continue
                if sub is not None:
                    _apply_removals(sub, Path(entry.path), False)


def _modifier(repo: OSTree.Repo, req: ComposeRequest, upper: Path, skip_top: bool) -> OSTree.RepoCommitModifier:
    def commit_filter(_repo: OSTree.Repo, path: str, info: Gio.FileInfo) -> OSTree.RepoCommitFilterResult:
        p = PurePosixPath(path)
        if skip_top and len(p.parts) >= 2 and p.parts[1] in _SKIPPED_TOP:
            return OSTree.RepoCommitFilterResult.SKIP
        # sqlite's shared-memory and WAL files are the open database's, never the image's:
        # committed, a reader of a deployment would write through them into the repository.
        if p.parent == req.dbpath and p.name.endswith(_SQLITE_RUNTIME):
            return OSTree.RepoCommitFilterResult.SKIP
        if info.get_file_type() == Gio.FileType.SPECIAL:  # whiteouts, handled above
            return OSTree.RepoCommitFilterResult.SKIP
        return OSTree.RepoCommitFilterResult.ALLOW

    def xattrs(_repo: OSTree.Repo, path: str, _info: Gio.FileInfo) -> GLib.Variant:
        full = str(upper) + path
        pairs = []
        try:
            names = os.listxattr(full, follow_symlinks=False)
        except OSError:
            names = []
        for name in sorted(names):
            if name.startswith(_OVERLAY_XATTR_PREFIX):
                continue
            value = os.getxattr(full, name, follow_symlinks=False)
            pairs.append((name.encode() + b"\0", value))
        return GLib.Variant("a(ayay)", pairs)

    mod = OSTree.RepoCommitModifier.new(OSTree.RepoCommitModifierFlags.SKIP_XATTRS, commit_filter)
    mod.set_xattr_callback(xattrs)
    # Label new files with the base image's SELinux policy, if it ships one.
    with suppress(GLib.Error):
        mod.set_sepolicy_from_commit(repo, req.base_commit, None)
    return mod


def _commit_upper(repo: OSTree.Repo, req: ComposeRequest, upper_root: Path, upper_etc: Path) -> str:
    try:
        repo.prepare_transaction(None)
        mtree = OSTree.MutableTree.new_from_commit(repo, req.base_commit)
        _apply_removals(mtree, upper_root, True)
        repo.write_directory_to_mtree(Gio.File.new_for_path(str(upper_root)), mtree,
                                      _modifier(repo, req, upper_root, True), None)
        # Packages install config to /etc; an OSTree image keeps it in /usr/etc.
        _, usr = mtree.ensure_dir("usr")
        _, usr_etc = usr.ensure_dir("etc")
        _apply_removals(usr_etc, upper_etc, False)
        repo.write_directory_to_mtree(Gio.File.new_for_path(str(upper_etc)), usr_etc,
                                      _modifier(repo, req, upper_etc, False), None)
        _, root = repo.write_mtree(mtree, None)
        _, base_variant = repo.load_variant(OSTree.ObjectType.COMMIT, req.base_commit)
        base_meta = base_variant.get_child_value(0)
        meta = GLib.VariantDict.new(base_meta)
        meta.insert_value("rpmostree.clientlayer", GLib.Variant("b", True))
        meta.insert_value("lulayer.base-checksum", GLib.Variant("s", req.base_commit))
        meta.insert_value("lulayer.requested", GLib.Variant("as", list(req.requested)))
        meta.insert_value("lulayer.packages", GLib.Variant("as", [p.nevra for p in req.packages]))
        subject = "lulayer: " + (", ".join(req.requested) or "no packages")
        _, commit = repo.write_commit(req.base_commit, subject, None, meta.end(), root, None)
        repo.commit_transaction(None)
    except GLib.Error as e:
        repo.abort_transaction(None)
        raise ComposeError(f"committing the new tree failed: {e.message}") from e
    result: str = commit
    return result


# --- the forked child: mounts and the rpm transaction -----------------------------------

def _transaction(req: ComposeRequest, dirs: dict[str, Path]) -> None:
    lower, merged = req.base_root, dirs["merged"]
    # Redirects and metacopy off: the upper layer must hold whole files and
    # real directories, since it is committed as it is.
    mount_overlay(merged, lower, dirs["upper-root"], dirs["work-root"], redirect_dir=False)
    (merged / "etc").mkdir(exist_ok=True)
    mount_overlay(merged / "etc", lower / "usr" / "etc", dirs["upper-etc"], dirs["work-etc"], redirect_dir=False)
    for d in ("proc", "dev", "run", "tmp"):
        (merged / d).mkdir(exist_ok=True)
    mount("proc", merged / "proc", "proc")
    mount("tmpfs", merged / "run", "tmpfs")
    mount("tmpfs", merged / "tmp", "tmpfs")
    mount("tmpfs", merged / "dev", "tmpfs", data="mode=0755")
    for node in ("null", "zero", "full", "random", "urandom", "tty"):
        target = merged / "dev" / node
        target.touch()
        mount(f"/dev/{node}", target, None, MS_BIND)
    install_rpms(merged, req.dbpath, req.rpms)
    make_readonly_safe(merged, req.dbpath)
