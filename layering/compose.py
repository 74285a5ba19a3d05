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

import functools
import glob
import hashlib
import json
import os
import stat
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import astuple, dataclass
from pathlib import Path, PurePosixPath

import gi
import rpm

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from lulayer.errors import ComposeError, LulayerError  # noqa: E402
from lulayer.faults import fault  # noqa: E402
from lulayer.fsutil import opened_dir, remove_path, remove_tree_at  # noqa: E402
from lulayer.layering import vardirs  # noqa: E402
from lulayer.linux import MS_BIND, syncfs  # noqa: E402
from lulayer.mounts import MountNamespace, mount, mount_overlay  # noqa: E402
from lulayer.rpmdb.db import read_packages  # noqa: E402
from lulayer.rpmdb.model import Package  # noqa: E402
from lulayer.rpmdb.transaction import install_rpms, make_readonly_safe  # noqa: E402
from lulayer.run import run_in_child  # noqa: E402

SCRATCH_PREFIX = "lulayer-compose-"
# What an image commit never carries from a package's payload: /var is the
# machine's (ostree keeps it per OS), the rest are API file systems.
DROPPED_TOP = frozenset({"var", "run", "tmp", "proc", "sys", "dev", "boot", "sysroot"})
# The root's upper layer skips these and /etc, which has an upper layer of its own (-> /usr/etc).
_SKIPPED_TOP = DROPPED_TOP | {"etc"}
OVERLAY_XATTR_PREFIX = "trusted.overlay."
SQLITE_RUNTIME = ("-shm", "-wal", "-journal")


@dataclass(frozen=True)
class RepoStamp:
    """An enabled rpm-md repository and when its metadata was generated (None: not known)."""

    id: str
    timestamp: int | None


@dataclass(frozen=True)
class Replacement:
    """A base package replaced by an override: `source` is "repo=NAME", or "" for a local RPM
    (rpm-ostree's keys of rpmostree.replaced-base-remote-packages; src/libpriv/rpmostree-core.cxx)."""

    new: Package
    old: Package
    source: str = ""


@dataclass(frozen=True)
class ComposeRequest:
    base_commit: str
    base_root: Path  # a checkout of base_commit (read-only lower layer)
    dbpath: PurePosixPath
    rpms: tuple[Path, ...]
    packages: tuple[Package, ...]  # what rpms hold, for the commit metadata
    requested: tuple[str, ...]
    repos: tuple[RepoStamp, ...] = ()  # the repositories resolved against, for the commit metadata
    removed: tuple[Package, ...] = ()  # base packages an override removes (erased in the transaction)
    replaced: tuple[Replacement, ...] = ()  # base packages an override replaces (rpms holds the new ones)


# A client-layer commit as rpm-ostree writes it, so that rpm-ostree reads a deployment lulayer made
# (coreos/rpm-ostree src/libpriv/rpmostree-core.cxx rpmostree_context_commit). What reads each key:
# - rpmostree.clientlayer (b): marks the commit layered; its parent is the base commit
#   (rust/src/daemon.rs deployment_layeredmeta_from_commit_impl).
# - rpmostree.clientlayer_version (u): missing means 0, and then rpm-ostree asserts an
#   rpmostree.spec tree spec instead (src/libpriv/rpmostree-util.cxx rpmostree_deployment_get_layered_info).
# - rpmostree.packages (as) from version 1; rpmostree.removed-base-packages (av) and
#   rpmostree.replaced-base-packages (a(vv)) from version 2; rpmostree.replaced-base-remote-packages
#   (a{sv}) from version 6: each asserted present (the same function).
# - rpmostree.modules (as): "older versions of rpm-ostree bail if this isn't found" (core.cxx).
# - rpmostree.state-sha512 (s): required by `rpm-ostree upgrade` on a layered merge deployment
#   (src/daemon/rpmostree-sysroot-upgrader.cxx); it compares it with its own digest of the request,
#   which it cannot be equal to, so rpm-ostree re-layers on its next upgrade.
# - rpmostree.rpmdb.pkglist (a(sssss)): the package list `rpm-ostree db` and the upgrader diff with
#   (src/lib/rpmostree-package.c); rpmostree.rpmmd-repos (aa{sv}): `status -v`
#   (src/app/rpmostree-builtin-status.cxx print_commit).
CLIENTLAYER_VERSION = 6


def clean_stale_scratch(tmp: Path) -> None:
    """Remove what a killed compose left in tmp (the caller holds the sysroot lock)."""
    if not tmp.is_dir():
        return
    with opened_dir(tmp) as fd:
        for name in os.listdir(fd):
            if name.startswith(SCRATCH_PREFIX):
                remove_tree_at(fd, name)


def compose(repo: OSTree.Repo, scratch_dir: Path, req: ComposeRequest,
            ahead: Callable[[Path, Path], object] | None = None) -> str:
    """Install req.rpms onto the base commit, working in scratch_dir (on the repository's
    file system); return the new commit's checksum. ahead is called with the upper layers of
    the root and of /etc once rpm has written them, before they are committed (live.mount_ahead)."""
    scratch = scratch_dir / f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"
    dirs = {k: scratch / k for k in ("upper-root", "work-root", "upper-etc", "work-etc", "merged")}
    for d in dirs.values():
        d.mkdir(parents=True)
    installed = scratch / "packages.json"  # the new tree's rpmdb as the child reads it
    base_db = commit_dir_names(repo, req.base_commit, req.dbpath)
    try:
        try:
            run_in_child("lulayer-compose", lambda: _transaction(req, dirs, installed, base_db),
                         mount_namespace=MountNamespace.PRIVATE)
        except LulayerError as e:
            raise ComposeError(f"composing the new tree failed: {e.message}", hint=e.hint) from e
        packages = tuple(Package(*p) for p in json.loads(installed.read_text()))
        if ahead is not None:
            ahead(dirs["upper-root"], dirs["upper-etc"])
        return _commit_upper(repo, req, dirs["upper-root"], dirs["upper-etc"], packages)
    finally:
        remove_path(scratch)


def is_whiteout(st: os.stat_result) -> bool:
    """Whether st is an overlayfs whiteout (a character device 0/0)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def own_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    """path's xattrs, sorted by name, but the overlay's own (what a commit of an upper layer keeps)."""
    return tuple((n, os.getxattr(path, n, follow_symlinks=False))
                 for n in sorted(os.listxattr(path, follow_symlinks=False)) if not n.startswith(OVERLAY_XATTR_PREFIX))


def is_opaque(path: str | Path) -> bool:
    """Whether the directory at path, in an overlay's upper layer, hides what the lower layers have there."""
    try:
        return os.getxattr(path, f"{OVERLAY_XATTR_PREFIX}opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def commit_dir_names(repo: OSTree.Repo, commit: str, path: PurePosixPath) -> frozenset[str]:
    """The names directly in path of commit (read from the repository, not a checkout)."""
    _, root, _ = repo.read_commit(commit, None)
    names = set()
    try:
        enum = root.resolve_relative_path(str(path).lstrip("/")).enumerate_children(
            "standard::name", Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None)
        names = {info.get_name() for info in enum}
    except GLib.Error as e:
        raise ComposeError(f"commit {commit[:12]} has no {path}: {e.message}") from e
    return frozenset(names)


def _apply_removals(mtree: OSTree.MutableTree, upper: Path, top_level: bool) -> None:
    """Carry the overlay's whiteouts (a base file removed, e.g. by an override) and opaque
    directories into mtree, and take the whiteouts out of upper: libostree refuses a device node
    in what it commits, and a name the base lacks (a stray file masked in the lower layer) has
    nothing to remove."""
    with os.scandir(upper) as it:
        for entry in it:
            if top_level and entry.name in _SKIPPED_TOP:
                continue
            st = entry.stat(follow_symlinks=False)
            if is_whiteout(st):
                mtree.remove(entry.name, True)
                os.unlink(entry.path)
            elif stat.S_ISDIR(st.st_mode):
                if is_opaque(entry.path):
                    mtree.remove(entry.name, True)
                    continue
                try:
                    _, _, sub = mtree.lookup(entry.name)
                except GLib.Error:  # a directory new in the upper layer
                    continue
                if sub is not None:
                    _apply_removals(sub, Path(entry.path), False)


def _modifier(repo: OSTree.Repo, req: ComposeRequest, upper: Path, skip_top: bool) -> OSTree.RepoCommitModifier:
    db = str(req.dbpath)

    def commit_filter(_repo: OSTree.Repo, path: str, info: Gio.FileInfo) -> OSTree.RepoCommitFilterResult:
        # Called from C, once per file: nothing may raise here (a signal is only recorded, signals.py).
        # path is "/" or "/TOP/..." in the folder committed; plain string work (a PurePosixPath per
        # call was half of this callback's time, 0.1 s for a 2,000-file package).
        fault("commit-filter")
        if skip_top and path[1:].partition("/")[0] in _SKIPPED_TOP:
            return OSTree.RepoCommitFilterResult.SKIP
        # sqlite's shared-memory and WAL files are the open database's, never the image's:
        # committed, a reader of a deployment would write through them into the repository.
        parent, _, name = path.rpartition("/")
        if parent == db and name.endswith(SQLITE_RUNTIME):
            return OSTree.RepoCommitFilterResult.SKIP
        if info.get_file_type() == Gio.FileType.SPECIAL:  # (whiteouts are gone: _apply_removals)
            return OSTree.RepoCommitFilterResult.SKIP
        return OSTree.RepoCommitFilterResult.ALLOW

    def xattrs(_repo: OSTree.Repo, path: str, _info: Gio.FileInfo) -> GLib.Variant:
        try:
            own = own_xattrs(str(upper) + path)
        except OSError:
            own = ()
        return GLib.Variant("a(ayay)", [(name.encode() + b"\0", value) for name, value in own])

    # CONSUME: the upper layer is scratch, so libostree may take each file rpm wrote as its object
    # ("adopt": checksum it and rename it into the repository) instead of writing a copy, as
    # rpm-ostree's relabeling does (src/libpriv/rpmostree-core.cxx relabel_one_package). It adopts a
    # file whose xattrs the callback below leaves as they are on disk, the others it copies.
    mod = OSTree.RepoCommitModifier.new(OSTree.RepoCommitModifierFlags.CONSUME, commit_filter)
    mod.set_xattr_callback(xattrs)
    # Label new files with the base image's SELinux policy, if it ships one.
    with suppress(GLib.Error):
        mod.set_sepolicy_from_commit(repo, req.base_commit, None)
    return mod


def _commit_upper(repo: OSTree.Repo, req: ComposeRequest, upper_root: Path, upper_etc: Path,
                  packages: tuple[Package, ...]) -> str:
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
        meta = clientlayer_metadata(req, base_meta, packages)
        bootable = base_meta.lookup_value("ostree.bootable", GLib.VariantType("b"))
        if bootable is not None and bootable.get_boolean():
            # ostree.bootable and ostree.linux, as rpm-ostree adds them (rpmostree_context_commit).
            OSTree.commit_metadata_for_bootable(root, meta, None)
        subject = "lulayer: " + (", ".join(req.requested) or "no packages")
        _, commit = repo.write_commit(req.base_commit, subject, None, meta.end(), root, None)
        commit_transaction(repo)
    except GLib.Error as e:
        repo.abort_transaction(None)
        raise ComposeError(f"committing the new tree failed: {e.message}") from e
    except OSError as e:
        repo.abort_transaction(None)
        raise ComposeError(f"committing the new tree failed: syncfs: {e.strerror}") from e
    result: str = commit
    return result


def commit_transaction(repo: OSTree.Repo) -> None:
    """Finish repo's transaction, which sets no ref, as durably as libostree does, for two syncfs.

    libostree syncs the file system of its staging folder, renames the new objects into objects/,
    then fsyncs every objects/XX folder: all 256 of a grown repository, whatever the commit holds
    (fsync_object_dirs, src/libostree/ostree-repo-commit.c), 20 ms a commit here. This keeps its
    order with one syncfs in place of the 256 fsyncs: the objects' content is on disk before they
    are renamed, and the renames before anyone can name the commit. (A transaction that sets refs
    would write them unsynced: not for those.) A repository with fsync turned off stays so.
    """
    if repo.get_disable_fsync():
        repo.commit_transaction(None)
        return
    fd = repo.get_dfd()
    syncfs(fd)  # what libostree's commit_transaction does first
    repo.set_disable_fsync(True)  # read again here; the objects went to the staging folder with fsync on
    try:
        repo.commit_transaction(None)
    finally:
        repo.set_disable_fsync(False)
    syncfs(fd)


def clientlayer_metadata(req: ComposeRequest, base_meta: GLib.Variant,
                         packages: tuple[Package, ...]) -> GLib.VariantDict:
    """The new commit's metadata: rpm-ostree's client-layer keys (see CLIENTLAYER_VERSION) and
    lulayer's own. Like rpm-ostree, nothing of the base commit's but its version: an image's
    ostree.manifest-digest belongs to the image's merge commit, not to a layer over it."""
    meta = GLib.VariantDict.new(None)
    version = base_meta.lookup_value("version", GLib.VariantType("s"))
    if version is not None:
        meta.insert_value("version", version)
    rpmdb = sorted(packages, key=functools.cmp_to_key(_dnf_package_cmp))
    meta.insert_value("rpmostree.clientlayer", GLib.Variant("b", True))
    meta.insert_value("rpmostree.clientlayer_version", GLib.Variant("u", CLIENTLAYER_VERSION))
    meta.insert_value("rpmostree.packages", GLib.Variant("as", list(req.requested)))
    meta.insert_value("rpmostree.modules", GLib.Variant("as", []))
    meta.insert_value("rpmostree.removed-base-packages", GLib.Variant("av", [_nevra_variant(p) for p in req.removed]))
    local = _replacements_variant(r for r in req.replaced if not r.source)
    meta.insert_value("rpmostree.replaced-base-packages", local)
    meta.insert_value("rpmostree.replaced-base-remote-packages", GLib.Variant("a{sv}", {
        source: _replacements_variant(r for r in req.replaced if r.source == source)
        for source in sorted({r.source for r in req.replaced if r.source})}))
    meta.insert_value("rpmostree.rpmdb.pkglist", GLib.Variant(
        "a(sssss)", [(p.name, str(p.epoch), p.version, p.release, p.arch) for p in rpmdb]))
    meta.insert_value("rpmostree.rpmmd-repos", GLib.Variant("aa{sv}", [
        {"id": GLib.Variant("s", r.id), **({"timestamp": GLib.Variant("t", r.timestamp)} if r.timestamp else {})}
        for r in req.repos]))
    state = hashlib.sha512(req.base_commit.encode())
    for line in (*(f"requested {r}" for r in req.requested), *(f"package {p.nevra}" for p in rpmdb)):
        state.update(b"\n" + line.encode())
    meta.insert_value("rpmostree.state-sha512", GLib.Variant("s", state.hexdigest()))
    meta.insert_value("lulayer.base-checksum", GLib.Variant("s", req.base_commit))
    meta.insert_value("lulayer.requested", GLib.Variant("as", list(req.requested)))
    meta.insert_value("lulayer.packages", GLib.Variant("as", [p.nevra for p in req.packages]))
    return meta


def _nevra_variant(p: Package) -> GLib.Variant:
    """A package as rpm-ostree records it in the override keys: (nevra, name, epoch, version,
    release, arch), "(sstsss)" (src/libpriv/rpmostree-core.cxx gv_nevra_from_pkg)."""
    return GLib.Variant("(sstsss)", (p.nevra, p.name, p.epoch, p.version, p.release, p.arch))


def _replacements_variant(replaced: Iterable[Replacement]) -> GLib.Variant:
    """(new, old) pairs as rpm-ostree writes them: a(vv)."""
    return GLib.Variant("a(vv)", [(_nevra_variant(r.new), _nevra_variant(r.old))
                                  for r in sorted(replaced, key=lambda r: r.new)])


def _dnf_package_cmp(a: Package, b: Package) -> int:
    """libdnf's dnf_package_cmp, the order rpm-ostree keeps rpmostree.rpmdb.pkglist in (and
    searches it by): name, then EVR as rpm compares them, then arch."""
    if a.name != b.name:
        return -1 if a.name < b.name else 1
    evr: int = rpm.labelCompare((str(a.epoch), a.version, a.release), (str(b.epoch), b.version, b.release))
    if evr:
        return evr
    return (a.arch > b.arch) - (a.arch < b.arch)


def repo_stamps(cache_dir: Path, repo_ids: Sequence[str]) -> tuple[RepoStamp, ...]:
    """Each repository with the newest timestamp of its cached repomd.xml, which is what
    rpm-ostree records (libdnf's dnf_repo_get_timestamp_generated). The resolvers cache a
    repository as CACHE/BACKEND/cache/ID-HASH/repodata/repomd.xml."""
    stamps = []
    for repo_id in repo_ids:
        found = sorted(cache_dir.glob(f"*/cache/{glob.escape(repo_id)}-{'[0-9a-f]' * 16}/repodata/repomd.xml"),
                       key=lambda f: f.stat().st_mtime)
        timestamp = None
        if found:
            with suppress(ET.ParseError, ValueError, OSError):
                times = [int(t.text or "") for t in ET.parse(found[-1]).getroot().iter(f"{_REPOMD}timestamp")]
                timestamp = max(times, default=None)
        stamps.append(RepoStamp(repo_id, timestamp))
    return tuple(stamps)


_REPOMD = "{http://linux.duke.edu/metadata/repo}"


# --- the forked child: mounts and the rpm transaction -----------------------------------

def _mask_strays(db_dir: Path, base_names: frozenset[str]) -> None:
    """Hide what lies in the checkout's rpmdb folder beyond the base commit's files.

    A reader of a deployment's WAL rpmdb (`rpm --root DEPLOYMENT -qa`) leaves -shm and
    -wal files in the checkout; sqlite would replay such a log into the database, so
    the transaction must see the commit's rpmdb and nothing else. Removed on the
    overlay, they become whiteouts of the upper layer, never written to the checkout.
    """
    with opened_dir(db_dir) as fd:
        for name in sorted(set(os.listdir(fd)) - base_names):
            remove_tree_at(fd, name)


def _transaction(req: ComposeRequest, dirs: dict[str, Path], installed: Path, base_db: frozenset[str]) -> None:
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
    _mask_strays(merged / str(req.dbpath).lstrip("/"), base_db)
    # /opt and /usr/local link into /var, which no image carries: while rpm and the scriptlets
    # run they point into /usr (layering/vardirs.py), and a tmpfiles.d file links /var to that.
    redirected = vardirs.redirect(merged)
    install_rpms(merged, req.dbpath, req.rpms, erase=tuple(p.name for p in req.removed))
    make_readonly_safe(merged, req.dbpath)
    vardirs.restore(merged, redirected)
    vardirs.write_tmpfiles(merged, dirs["upper-root"], lower)
    # Read where it was written: the upper layer already holds the rpmdb and its lock file, and a
    # database in rollback-journal mode leaves nothing beside it after a read.
    installed.write_text(json.dumps([astuple(p) for p in read_packages(merged, req.dbpath)]))
