"""Live apply: make the booted system's /usr hold the target commit's /usr, now.

The transaction, after the design this project comes from:
  1. the caller holds the sysroot lock and has made the target deployment;
  2. the booted deployment's own checkout is never written: changes go to a
     transient overlay on its /usr, so the booted commit stays a pristine
     rollback target;
  3. "in progress, target = COMMIT" is recorded before /usr is touched;
  4. the diff of the live commit against the target, from content checksums,
     is applied: the new-file set (parents first), then changed files (each
     written beside its target and renamed over it), then the replaced-directory
     set (below), then the rpmdb, built whole as NAME.new and swapped in with
     renameat2(RENAME_EXCHANGE), then removals;
  5. /etc gains the target's new config files that it lacks;
  6. "done, live = target" is recorded.
Interrupted anywhere, the same call finishes it: every step is idempotent.

The first live update of a boot that only adds (the rpmdb aside) takes a shorter way,
with the same steps and fault points: no file is written. Each new file's repository
object is hardlinked into a layer beside the overlay's upper and work folders, and the
overlay is mounted with that layer under its upper layer (_apply_as_layer): the whole
update, rpmdb included, appears in one mount(2). Later updates of the boot write through
that overlay, as above. An install can mount that layer before its commit is written,
made of the files rpm wrote (mount_ahead); the live update to the commit then checks it
and records it (_ahead_matches).

The replaced-directory set is every path whose new tree is swapped in whole: a
path that changes between a directory and a file or symlink, and a directory
that keeps none of its entries. Its new tree is built beside it under a
temporary name (fsutil.temp_name), then exchanged with it in one
renameat2(RENAME_EXCHANGE), so no reader sees a moment with neither; the old
tree, now under the temporary name, goes with the removals. Killed before the
exchange, the old tree is in place; after it, the new one: the next run removes
the temporary names it finds beside the set and does the same again.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from gi.repository import Gio, GLib, OSTree

from lulayer.apply import etc
from lulayer.apply import state as live_state
from lulayer.apply.diff import (
    DirEntry,
    DirMeta,
    FileEntry,
    Kind,
    TreeDiff,
    diff_commits,
    dir_metas_at,
    kinds_at,
    read_dir_meta,
    read_file_object,
)
from lulayer.apply.sysconf import apply_config
from lulayer.errors import LiveApplyError, LiveRefusedError
from lulayer.faults import fault
from lulayer.fsutil import (
    TEMP_NAME_RE,
    open_dir,
    opened_dir,
    remove_tree_at,
    suppress_errno,
    temp_name,
    tree_usage,
    write_file_atomic,
    write_symlink_atomic,
)
from lulayer.layering import vardirs
from lulayer.layering.compose import OVERLAY_XATTR_PREFIX, SQLITE_RUNTIME, is_opaque, is_whiteout, own_xattrs
from lulayer.linux import RENAME_EXCHANGE, renameat2, syncfs
from lulayer.mounts import (
    MountInfo,
    MountNamespace,
    bind_writable,
    is_overlay_with_redirect_dir,
    mount_at,
    mount_overlay,
    mounts,
    overlay_dirs,
    set_read_only,
    unmount,
)
from lulayer.progress import Progress, ProgressReport
from lulayer.rpmdb.db import commit_packages, tree_dbpath
from lulayer.rpmdb.model import PackageChanges
from lulayer.run import run_in_child
from lulayer.signals import Stage, checkpoint, critical, reached
from lulayer.sysroot import LIVE_BACKING, Deployment, Sysroot

STEPS = ("marked", "overlay", "files-half", "files", "rpmdb-new", "exchanged", "removed", "etc")
RESET_STEPS = ("reset-marked", "reset-unmounted")  # the same, for apply-live --reset
AHEAD_STEPS = ("ahead-marked", "ahead-half", "ahead-mounted")  # mount_ahead's, before the commit
# Fault points of each path of the replaced-directory set: "STEP" stops at the first path,
# "STEP:/usr/PATH" at that one.
REPLACE_STEPS = ("replace-half-built", "replace-built", "replace-swapped", "replace-half-removed")
_NAMED_TYPE_CHANGES = 8  # named in a refusal; the rest are counted
_log = logging.getLogger(__name__)
LAYER = "layer"  # in the backing folder, beside upper and work: the layer of _apply_as_layer


@dataclass(frozen=True)
class LiveResult:
    source: str
    target: str
    changes: PackageChanges
    added: int = 0
    changed: int = 0
    removed: int = 0
    rpmdb: str = "unchanged"
    etc_added: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    resumed: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    users: tuple[str, ...] = ()  # users and groups the new sysusers.d files made ("user NAME")
    warnings: tuple[str, ...] = ()  # what failed after the files were applied (they stay)

    @property
    def noop(self) -> bool:
        return self.source == self.target and not self.resumed

    def to_json(self) -> dict[str, object]:
        """What the text output of a live apply says (cli._print_live), as data."""
        return {
            "changed": not self.noop,
            "source": self.source,
            "target": self.target,
            "resumed": self.resumed,
            "changes": self.changes.to_json(),
            "files": {"added": self.added, "changed": self.changed, "removed": self.removed},
            "rpmdb": self.rpmdb,
            "etc-added": list(self.etc_added),
            "units": list(self.units),
            "notes": list(self.notes),
            "users": list(self.users),
            "warnings": list(self.warnings),
        }


def live_root(sysroot: Sysroot, booted: Deployment) -> Path:
    """The root the booted system runs in: the deployment folder, or / on a host."""
    return booted.path if sysroot.folder else Path("/")


def drop_stale_backing(sysroot: Sysroot) -> int:
    """Remove what lulayer keeps in the backing folders of deployments that no longer exist (the
    live layer's upper and work folders, the /etc record); returns the bytes freed. A layer some
    overlay still uses (a deployment removed while its live /usr is mounted) is left."""
    names = {d.name for d in sysroot.deployments()}
    in_use = {overlay_dirs(m).upper for m in mounts() if m.fstype == "overlay"}
    freed = 0
    for backing in sorted(sysroot.path.glob("ostree/deploy/*/backing/*")):
        if backing.name in names or backing.is_symlink() or not backing.is_dir():
            continue
        live_dir = backing / LIVE_BACKING
        if live_dir / "upper" in in_use:
            continue
        freed += tree_usage(live_dir)
        with opened_dir(backing, follow_symlinks=False) as fd:
            remove_tree_at(fd, LIVE_BACKING)
            etc.drop_record_at(fd)
        with suppress_errno(errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            os.rmdir(backing)  # left when something else keeps its own files there
    return freed


def _drop_backing(back: Path) -> None:
    """Remove the backing folder of an old upper layer; only empty it when it is a mount
    point (a file system of its own for the upper layer)."""
    if not back.exists():
        return
    with opened_dir(back, follow_symlinks=False) as fd:
        for name in os.listdir(fd):
            remove_tree_at(fd, name)
    with suppress_errno(errno.EBUSY):
        os.rmdir(back)


@contextmanager
def writable_usr(sysroot: Sysroot, booted: Deployment) -> Iterator[tuple[Path, bool]]:
    """The live /usr as a writable overlay for the block; read-only to everyone after.

    Yields the path and whether the overlay can exchange directories
    (redirect_dir=on). An overlay someone else mounted (`ostree admin unlock`)
    is used as it is.
    """
    usr = live_root(sysroot, booted) / "usr"
    info = mount_at(usr)
    if info is None or info.fstype != "overlay":
        back = sysroot.backing_dir(booted)
        _drop_backing(back)  # an upper layer from an earlier boot: /usr is pristine again
        (back / "upper").mkdir(parents=True)
        (back / "work").mkdir()
        _in_running_system(sysroot, "lulayer-mount", lambda: _mount_live_overlay(sysroot, usr, back))
        info = mount_at(usr)
    if info is None or info.fstype != "overlay":
        raise LiveApplyError(f"the overlay on {usr} is not there", hint="run `lulayer apply-live` again")
    ours = _is_ours(sysroot, booted, info)
    if "ro" in info.options:
        set_read_only(usr, False)
    try:
        yield usr, is_overlay_with_redirect_dir(info)
    finally:
        if ours:  # read-only to other processes between live applies, as ostree's transient unlock is
            set_read_only(usr, True)


def _in_running_system(sysroot: Sysroot, name: str, work: Callable[[], None]) -> None:
    """Run work where the running system's mounts are: on a host, in a child in PID 1's mount
    namespace (this process writes from one of its own, mounts.host_writer_namespace); on a
    folder sysroot, here."""
    if sysroot.folder:
        work()
    else:
        run_in_child(name, work, mount_namespace=MountNamespace.HOST)


def _mount_live_overlay(sysroot: Sysroot, usr: Path, back: Path, layer: Path | None = None) -> None:
    """Mount the live overlay on usr, read-only (per mount: set_read_only), its layers in back
    (with layer between the upper layer and usr, when given).

    On a host this runs in PID 1's mount namespace, where /sysroot, and back with it, may be
    read-only: the overlay's upper layer must be on a writable mount, so back is bind-mounted
    read-write onto itself for the mount, and that bind mount is detached at once (the overlay
    keeps a private clone of it). The overlay reaches the writer's namespace (a slave of PID 1's)
    read-write, as it is mounted; the read-only flag set after it in PID 1's does not propagate.
    """
    if not sysroot.folder:
        bind_writable(back)
    try:
        mount_overlay(usr, usr, back / "upper", back / "work", redirect_dir=True,
                      above=(layer,) if layer is not None else ())
        set_read_only(usr, True)
    finally:
        if not sysroot.folder:
            unmount(back, lazy=True)


def _is_ours(sysroot: Sysroot, booted: Deployment, info: MountInfo) -> bool:
    return info.fstype == "overlay" and overlay_dirs(info).upper == sysroot.backing_dir(booted) / "upper"


class _Tree:
    """Writes into a tree through directory fds, never following a symlink on the way."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: dict[str, int] = {}
        self._fds["/"] = open_dir(root)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def dir_fd(self, rel: str) -> int:
        rel = "/" + rel.strip("/") if rel.strip("/") else "/"
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        parent_rel, _, name = rel.rpartition("/")  # string work: it runs once per file
        parent = self.dir_fd(parent_rel)
        try:
            fd = open_dir(name, dir_fd=parent, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LiveApplyError(f"{self.root}{rel} is not a directory (a symlink or file is in the way)",
                                     hint="move it aside, then run `lulayer apply-live` again") from e
            raise
        self._fds[rel] = fd
        return fd

    def forget(self, rel: str) -> None:
        for key in [k for k in self._fds if k == rel or k.startswith(rel + "/")]:
            os.close(self._fds.pop(key))

    def split(self, path: str) -> tuple[int, str]:
        parent, _, name = path.rstrip("/").rpartition("/")
        return self.dir_fd(parent), name

    def sync(self) -> None:
        """Make everything written to the tree durable: one syncfs of its file system (of an
        overlay: its upper layer's), instead of an fsync per file."""
        with _doing(f"syncing the file system of {self.root}"):
            syncfs(self._fds["/"])


def _set_dir_meta_at(parent: int, name: str, meta: DirMeta) -> None:
    fd = open_dir(name, dir_fd=parent, follow_symlinks=False)
    try:
        os.fchown(fd, meta.uid, meta.gid)
        os.fchmod(fd, stat.S_IMODE(meta.mode))
        for k, v in meta.xattrs:
            os.setxattr(fd, k, v)
    finally:
        os.close(fd)


def _rel(path: str, prefix: str) -> str:
    """path relative to the tree mounted at prefix (/usr/bin/x under /usr is /bin/x)."""
    return path[len(prefix):] or "/"


class _Failed(Exception):
    """An OSError, with what was being done when it struck (see _doing)."""

    def __init__(self, what: str, error: OSError) -> None:
        super().__init__(f"{what}: {error}")
        self.what = what
        self.error = error


@contextmanager
def _doing(what: str) -> Iterator[None]:
    """Name the operation in the error an OSError in the block becomes; the innermost name wins."""
    try:
        yield
    except OSError as e:
        raise _Failed(what, e) from e


@dataclass(frozen=True)
class _Replacement:
    """A path of the replaced-directory set and its new tree."""

    path: str
    dirs: tuple[DirEntry, ...]  # parents first, path itself first when the new tree is a directory
    files: tuple[FileEntry, ...]  # path itself when the new tree is a file or symlink


def _replaced_set(diff: TreeDiff, dbpath: PurePosixPath) -> tuple[tuple[_Replacement, ...], TreeDiff]:
    """The replaced-directory set of diff, topmost paths only, and the rest of the diff.

    The rpmdb's folder and its parents are left out: the rpmdb is swapped on its own.
    """
    whole = {e.path: e for e in diff.replaced_dirs}
    db = str(dbpath)
    found = {p for p in diff.retyped | whole.keys() if p != db and not db.startswith(p + "/")}
    roots = {p for p in found if not any(str(a) in found for a in PurePosixPath(p).parents)}
    if not roots:
        return (), diff

    def root_of(path: str) -> str | None:
        if path in roots:
            return path
        return next((str(a) for a in PurePosixPath(path).parents if str(a) in roots), None)

    dirs: dict[str, list[DirEntry]] = {p: [whole[p]] if p in whole else [] for p in roots}
    files: dict[str, list[FileEntry]] = {p: [] for p in roots}
    for d in diff.added_dirs:
        if (r := root_of(d.path)) is not None:
            dirs[r].append(d)
    for f in (*diff.added_files, *diff.changed_files):
        if (r := root_of(f.path)) is not None:
            files[r].append(f)
    replaced = tuple(_Replacement(p, tuple(dirs[p]), tuple(files[p])) for p in sorted(roots))
    return replaced, diff.without(roots)


class _Applier:
    def __init__(self, sysroot: Sysroot, tree: _Tree, prefix: str) -> None:
        self.repo = sysroot.repo
        self.tree = tree
        self.prefix = prefix

    def where(self, path: str) -> str:
        """path as the file system sees it, for messages."""
        return f"{self.tree.root}{_rel(path, self.prefix)}"

    def make_dir(self, e: DirEntry) -> None:
        parent, name = self.tree.split(_rel(e.path, self.prefix))
        try:
            with _doing(f"creating the directory {self.where(e.path)}"):
                os.mkdir(name, 0o700, dir_fd=parent)
        except _Failed as failed:
            if not isinstance(failed.error, FileExistsError):
                raise
            with _doing(f"looking at {self.where(e.path)}"):
                st = os.lstat(name, dir_fd=parent)
            if not stat.S_ISDIR(st.st_mode):
                # Not ours: neither commit has it (a path that changes type is swapped whole,
                # see _replaced_set), so someone put it there; it may point out of the tree.
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a file"
                raise LiveApplyError(f"{self.tree.root}{_rel(e.path, self.prefix)} is {kind} where the update "
                                     "puts a directory",
                                     hint="move it aside (`lulayer apply-live --reset` first if /usr is "
                                          "live), then run `lulayer apply-live` again") from None
        self.set_dir_meta(e)

    def set_dir_meta(self, e: DirEntry) -> None:
        """Give the directory at e.path the owner, mode and xattrs of e's dirmeta."""
        meta = read_dir_meta(self.repo, e.meta_checksum)
        parent, name = self.tree.split(_rel(e.path, self.prefix))
        with _doing(f"setting the owner, mode and xattrs of {self.where(e.path)}"):
            _set_dir_meta_at(parent, name, meta)

    def write_file(self, e: FileEntry, dest: tuple[int, str] | None = None) -> int:
        """Write the file; return its size."""
        obj = read_file_object(self.repo, e.checksum)
        parent, name = dest or self.tree.split(_rel(e.path, self.prefix))
        # Written elsewhere than e.path (dest), the caller names what it does.
        with _doing(f"writing {self.where(e.path)}") if dest is None else nullcontext():
            if not obj.is_symlink:
                # Not synced one by one: the tree is synced once before anything depends on it.
                write_file_atomic(parent, name, obj.write_content, mode=obj.mode, uid=obj.uid, gid=obj.gid,
                                  mtime=0, xattrs=obj.xattrs, sync_dir=False, sync=False)
                return obj.size
            write_symlink_atomic(parent, name, obj.symlink_target or "", uid=obj.uid, gid=obj.gid)
            return 0

    def remove_file(self, path: str) -> None:
        try:
            parent, name = self.tree.split(_rel(path, self.prefix))
        except FileNotFoundError:
            return
        with _doing(f"removing {self.where(path)}"), suppress_errno(errno.ENOENT):
            os.unlink(name, dir_fd=parent)

    def remove_dir(self, path: str) -> None:
        rel = _rel(path, self.prefix)
        self.tree.forget(rel)
        try:
            parent, name = self.tree.split(rel)
        except FileNotFoundError:
            return
        with _doing(f"removing {self.where(path)}"):
            remove_tree_at(parent, name)

    # The replaced-directory set: build beside, swap in, remove what was swapped out.

    def build(self, r: _Replacement) -> str:
        """Write r's new tree beside r.path under a temporary name; returns the name."""
        tmp = temp_name(PurePosixPath(r.path).name)
        beside = str(PurePosixPath(r.path).parent / tmp)
        entries: list[DirEntry | FileEntry] = [
            *(DirEntry(beside + d.path[len(r.path):], d.meta_checksum) for d in r.dirs),
            *(FileEntry(beside + f.path[len(r.path):], f.checksum) for f in r.files),
        ]
        for i, e in enumerate(entries):
            if isinstance(e, DirEntry):
                self.make_dir(e)
            else:
                self.write_file(e)
            if i + 1 == len(entries) // 2:
                _fault("replace-half-built", r.path)
        self.tree.forget(_rel(beside, self.prefix))
        _fault("replace-built", r.path)
        return tmp

    def swap_in(self, r: _Replacement, tmp: str) -> None:
        """Put the tree built at tmp in r.path's place in one step; the old one is left at tmp."""
        rel = _rel(r.path, self.prefix)
        self.tree.forget(rel)  # its fds would be the old tree's
        parent, name = self.tree.split(rel)
        with _doing(f"exchanging {self.where(r.path)} with the new tree built beside it"):
            try:
                renameat2(parent, tmp, parent, name, RENAME_EXCHANGE)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EXDEV, errno.EINVAL):
                    raise
                # ENOENT: nothing is there to swap out. EXDEV: an overlay without redirect_dir
                # cannot move a lower directory, EINVAL: a file system without RENAME_EXCHANGE.
                # Then the old tree goes first: a moment with neither.
                with _doing(f"removing {self.where(r.path)}"):
                    remove_tree_at(parent, name)
                with _doing(f"renaming {self.where(r.path)}'s new tree over it"):
                    os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        _fault("replace-swapped", r.path)

    def remove_swapped_out(self, r: _Replacement, tmp: str) -> None:
        parent_rel = _rel(str(PurePosixPath(r.path).parent), self.prefix)
        parent = self.tree.dir_fd(parent_rel)
        old = f"{self.where(str(PurePosixPath(r.path).parent))}/{tmp}"
        with _doing(f"removing the tree swapped out of {self.where(r.path)} ({old})"):
            try:
                fd = open_dir(tmp, dir_fd=parent, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise
                remove_tree_at(parent, tmp)  # a file or symlink, or nothing
                return
            try:
                children = os.listdir(fd)
                for i, child in enumerate(children):
                    remove_tree_at(fd, child)
                    if i + 1 == len(children) // 2:
                        _fault("replace-half-removed", r.path)
            finally:
                os.close(fd)
            os.rmdir(tmp, dir_fd=parent)


def _step(name: str) -> None:
    """The end of a step: its fault point (tests/test_kills.py), and a safe point to stop at."""
    fault(name)
    checkpoint()


def _fault(step: str, path: str) -> None:
    fault(step)
    fault(f"{step}:{path}")
    checkpoint()


def _commit_dir_files(sysroot: Sysroot, commit: str, path: PurePosixPath) -> list[FileEntry]:
    """The files directly in path of commit, with their content checksums."""
    _, root, _ = sysroot.repo.read_commit(commit, None)
    d = root.resolve_relative_path(str(path).lstrip("/"))
    out = []
    try:
        enum = d.enumerate_children("standard::name,standard::type", Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None)
        for info in enum:
            if info.get_file_type() == Gio.FileType.DIRECTORY:
                continue
            child = d.get_child(info.get_name())
            child.ensure_resolved()
            out.append(FileEntry(f"{path}/{info.get_name()}", child.get_checksum()))
    except GLib.Error as e:
        raise LiveApplyError(f"commit {commit[:12]} has no {path}: {e.message}") from e
    return out


def _running_kernels(root: Path, folder: bool) -> set[str]:
    if not folder:
        return {os.uname().release}
    mods = root / "usr" / "lib" / "modules"
    return {p.name for p in mods.iterdir() if (p / "vmlinuz").exists()} if mods.is_dir() else set()


def _type_changes(sysroot: Sysroot, diff: TreeDiff, source: str, target: str) -> list[tuple[str, Kind, Kind]]:
    """(path, what it is, what it becomes) for each path of diff that changes type."""
    retyped = sorted(diff.retyped)
    if not retyped and not diff.changed_files:
        return []
    new: dict[str, Kind | None] = {
        f.path: Kind.SYMLINK if read_file_object(sysroot.repo, f.checksum).is_symlink else Kind.FILE
        for f in diff.changed_files}
    old = kinds_at(sysroot.repo, source, [*retyped, *new])
    new |= kinds_at(sysroot.repo, target, retyped)
    out = []
    for path in sorted(old):
        before, after = old[path], new.get(path)
        if before is not None and after is not None and before != after:
            out.append((path, before, after))
    return out


def check_live_change(diff: TreeDiff, changes: PackageChanges, kernels: set[str],
                      type_changes: list[tuple[str, Kind, Kind]], *, allow_replacement: bool,
                      allow_removal: bool) -> None:
    """Refuse a live change that needs a reboot (the running kernel's modules) or, without
    allow_replacement, one that replaces or removes what the running system has."""
    for kver in kernels:
        if not diff.under(f"/usr/lib/modules/{kver}").is_empty:
            raise LiveRefusedError(f"the update changes the running kernel's /usr/lib/modules/{kver}",
                                 hint="kernel changes need a reboot: `systemctl reboot`")
    if allow_replacement:
        return
    if type_changes:
        named = [f"{p} from a {old} into a {new}" for p, old, new in type_changes[:_NAMED_TYPE_CHANGES]]
        more = len(type_changes) - len(named)
        raise LiveRefusedError(f"the update would turn {', '.join(named)}" + (f" and {more} more" if more else ""),
                             hint="pass --allow-replacement to apply it live, or reboot into it")
    replaced = [f"{o.nevra} -> {n.nevra}" for o, n in changes.upgraded]
    removed = [] if allow_removal else [p.nevra for p in changes.removed]
    if replaced or removed:
        what = "; ".join(x for x in (
            f"packages would be replaced: {', '.join(replaced)}" if replaced else "",
            f"packages would be removed: {', '.join(removed)}" if removed else "") if x)
        raise LiveRefusedError(what, hint="pass --allow-replacement to apply it live, or reboot into it")
    n_changed = len(diff.changed_files) + len(diff.changed_dirs)
    n_removed = 0 if allow_removal else len(diff.removed_files) + len(diff.removed_dirs)
    if n_changed or n_removed:
        raise LiveRefusedError(f"the update would change {n_changed} and remove {n_removed} existing files",
                             hint="pass --allow-replacement to apply it live, or reboot into it")


def _clean_temp_files(tree: _Tree, dirs: set[str]) -> None:
    """What a killed run left beside its targets under temporary names: files, and the
    trees of the replaced-directory set, built or swapped out."""
    for rel in dirs:
        try:
            fd = tree.dir_fd(rel)
        except (FileNotFoundError, LiveApplyError):
            continue
        with _doing(f"removing temporary files in {tree.root}{rel}"):
            for name in os.listdir(fd):
                if TEMP_NAME_RE.match(name):
                    remove_tree_at(fd, name)


def _exchange_rpmdb(sysroot: Sysroot, applier: _Applier, target: str, dbpath: PurePosixPath,
                    exchange_ok: bool) -> str:
    files = _commit_dir_files(sysroot, target, dbpath)
    parent_rel = _rel(str(dbpath.parent), applier.prefix)
    parent = applier.tree.dir_fd(parent_rel)
    name, new = dbpath.name, dbpath.name + ".new"
    db, db_new = applier.where(str(dbpath)), applier.where(str(dbpath) + ".new")
    with _doing(f"removing {db_new}"):
        remove_tree_at(parent, new)  # a half-built or old database from an interrupted run
    if not exchange_ok:
        # An overlay without redirect_dir cannot exchange a lower directory (EXDEV).
        fd = applier.tree.dir_fd(_rel(str(dbpath), applier.prefix))
        keep = {PurePosixPath(f.path).name for f in files}
        with _doing(f"replacing the rpmdb in {db} file by file"):
            for f in files:
                applier.write_file(f, (fd, PurePosixPath(f.path).name))
            for stale in set(os.listdir(fd)) - keep:
                with suppress_errno(errno.ENOENT, errno.EISDIR):
                    os.unlink(stale, dir_fd=fd)
        applier.tree.sync()
        return "replaced file by file (the overlay on /usr has no redirect_dir)"
    with _doing(f"building the new rpmdb in {db_new}"):
        st = os.stat(name, dir_fd=parent)
        os.mkdir(new, 0o700, dir_fd=parent)
        fd = open_dir(new, dir_fd=parent, follow_symlinks=False)
        try:
            for f in files:
                applier.write_file(f, (fd, PurePosixPath(f.path).name))
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd)
    # The commit point: every file written so far, and the new database, are on disk before
    # the exchange.
    applier.tree.sync()
    _step("rpmdb-new")
    applier.tree.forget(_rel(str(dbpath), applier.prefix))
    with critical(), _doing(f"exchanging {db_new} with {db}"):
        renameat2(parent, new, parent, name, RENAME_EXCHANGE)
        os.fsync(parent)
    _step("exchanged")
    with _doing(f"removing the old rpmdb ({db_new})"):
        remove_tree_at(parent, new)
        os.fsync(parent)
    return "exchanged atomically"


def _add_etc(sysroot: Sysroot, root: Path, diff: TreeDiff) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Config files new in the target's /usr/etc that /etc lacks; none is overwritten. Returns
    the files added and the folders made for them (as /etc/NAME)."""
    etc_diff = diff.under("/usr/etc")
    if not etc_diff.added_files:
        return (), ()
    etc_tree = _Tree(root / "etc")
    added, made = [], []
    try:
        etc_applier = _Applier(sysroot, etc_tree, "/usr/etc")
        for d in etc_diff.added_dirs:
            parent, name = etc_tree.split(_rel(d.path, "/usr/etc"))
            if not os.path.lexists(os.path.join(f"/proc/self/fd/{parent}", name)):
                etc_applier.make_dir(d)
                made.append("/etc" + _rel(d.path, "/usr/etc"))
        for f in etc_diff.added_files:
            parent, name = etc_tree.split(_rel(f.path, "/usr/etc"))
            if os.path.lexists(os.path.join(f"/proc/self/fd/{parent}", name)):
                continue
            etc_applier.write_file(f)
            added.append("/etc" + _rel(f.path, "/usr/etc"))
        etc_tree.sync()  # /etc outlives the boot, unlike the live /usr's upper layer
    finally:
        etc_tree.close()
    return tuple(added), tuple(made)


def reset(sysroot: Sysroot) -> LiveResult:
    """Return the live /usr to the booted commit: drop the overlay and its upper layer."""
    booted = sysroot.booted()
    st = live_state.read_state(sysroot, booted)
    usr = live_root(sysroot, booted) / "usr"
    info = mount_at(usr)
    ours = info is not None and _is_ours(sysroot, booted, info)
    # An interrupted reset (or an update back to the booted commit) is in progress toward it.
    source = st.commit if st.inprogress == booted.checksum else st.inprogress or st.commit
    changes = PackageChanges.between(
        commit_packages(sysroot.repo, source, tree_dbpath(live_root(sysroot, booted))),
        commit_packages(sysroot.repo, booted.checksum, tree_dbpath(live_root(sysroot, booted))),
    ) if source != booted.checksum else PackageChanges()
    if st.live or ours:
        # Once the overlay is gone the state must not claim it: killed from here on, the
        # next command finishes the reset (finish_interrupted), never diffs from a live
        # commit the pristine /usr no longer holds.
        reached(Stage.RESET)
        with critical():
            live_state.write_state(sysroot, booted, live_state.begin(st, booted.checksum))
    _step("reset-marked")
    if ours:
        _unmount_live(sysroot, booted)
    _step("reset-unmounted")
    _drop_backing(sysroot.backing_dir(booted))
    live_state.clear_state(sysroot, booted)
    return LiveResult(source=source, target=booted.checksum, changes=changes, resumed=st.inprogress is not None)


def _unmount_live(sysroot: Sysroot, booted: Deployment) -> None:
    """Take lulayer's overlay off the live /usr, lazily: processes running from it keep their files."""
    usr = live_root(sysroot, booted) / "usr"
    _in_running_system(sysroot, "lulayer-umount", lambda: unmount(usr, lazy=True))


def _apply_usr(sysroot: Sysroot, applier: _Applier, files: TreeDiff, target: str, dbpath: PurePosixPath, *,
               rpmdb_changed: bool, exchange_ok: bool, resumed: bool, progress: Progress | None) -> str:
    """Apply files (the diff but the rpmdb) to the live /usr, and the rpmdb when it changes:
    new files, the replaced-directory set, the rpmdb, removals. Returns how the rpmdb went."""
    replaced, rest = _replaced_set(files, dbpath)
    if resumed:
        parents = {_rel(str(PurePosixPath(p).parent), "/usr")
                   for p in (*(e.path for e in (*rest.added_files, *rest.changed_files)), *(r.path for r in replaced))}
        _clean_temp_files(applier.tree, parents)
    for d in rest.added_dirs:
        applier.make_dir(d)
    entries = (*rest.added_files, *rest.changed_files)
    written = 0
    for i, f in enumerate(entries):
        checkpoint()
        written += applier.write_file(f)
        if progress:
            progress(ProgressReport("Applying live", i + 1, len(entries), written, 0, f.path))
        if i == len(entries) // 2:
            _step("files-half")
    for d in rest.changed_dirs:
        applier.set_dir_meta(d)
    built = [applier.build(r) for r in replaced]
    if replaced:  # on disk before they are swapped in; otherwise the rpmdb's exchange syncs first
        applier.tree.sync()
    _step("files")
    for r, tmp in zip(replaced, built, strict=True):
        applier.swap_in(r, tmp)
    rpmdb = "unchanged"
    if rpmdb_changed:
        rpmdb = _exchange_rpmdb(sysroot, applier, target, dbpath, exchange_ok)
    for path in rest.removed_files:
        checkpoint()
        applier.remove_file(path)
    for path in rest.removed_dirs:
        checkpoint()
        applier.remove_dir(path)
    for r, tmp in zip(replaced, built, strict=True):
        applier.remove_swapped_out(r, tmp)
    applier.tree.sync()
    _step("removed")
    return rpmdb


def _as_layer(sysroot: Sysroot, plan: LivePlan) -> bool:
    """Whether plan goes live as a layer (_apply_as_layer): the first live update of the boot (no
    overlay on /usr yet, which still is the booted commit), it only adds (_only_adds), and the
    repository is bare: its objects are the files as a checkout has them (owner, mode, xattrs), not
    bare-user's stand-ins."""
    return (_layer_possible(sysroot, plan.booted, plan.root, os.fstat(sysroot.repo.get_dfd()).st_dev)
            and plan.source == plan.booted.checksum and _only_adds(plan))


def _layer_possible(sysroot: Sysroot, booted: Deployment, root: Path, device: int) -> bool:
    """Whether a layer of links to files on device can go under the live /usr: no overlay is on it
    yet, the repository is bare, and the backing folder is on device."""
    info = mount_at(root / "usr")
    return ((info is None or info.fstype != "overlay") and sysroot.repo.get_mode() == OSTree.RepoMode.BARE
            and _device(sysroot.backing_dir(booted)) == device)


def _only_adds(plan: LivePlan) -> bool:
    """Whether plan only adds files and directories (its rpmdb's files may also change or go, its
    folders stay folders)."""
    files = plan.files
    return (not (files.changed_files or files.removed_files or files.removed_dirs or files.changed_dirs)
            and not (plan.diff.removed_dirs or plan.diff.retyped))


def _device(path: Path) -> int:
    """The file system path is on, or would be made on (a hardlink cannot cross file systems:
    the backing folder may be a mount of its own)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.stat(path).st_dev


def _layer_parents(sysroot: Sysroot, target: str, diff: TreeDiff) -> list[DirEntry]:
    """The folders the layer needs besides the added ones: each existing parent of what it holds,
    and each folder whose owner, mode or xattrs change, with target's metadata (a merged folder
    shows its topmost layer's), parents first."""
    added = {d.path for d in diff.added_dirs}
    need = {d.path for d in diff.changed_dirs}
    for path in (*added, *(f.path for f in (*diff.added_files, *diff.changed_files)), *diff.removed_files):
        for parent in PurePosixPath(path).parents:
            p = str(parent)
            if p == "/usr" or not p.startswith("/usr/"):
                break
            if p not in added:
                need.add(p)
    metas = dir_metas_at(sysroot.repo, target, need)
    return [DirEntry(p, metas[p]) for p in sorted(need, key=lambda p: (p.count("/"), p))]


def _new_layer(back: Path) -> Path:
    """An empty layer in the backing folder back, beside new upper and work folders; what was there
    goes (a layer a killed run half built, the upper layer of an earlier boot)."""
    _drop_backing(back)
    layer = back / LAYER
    for folder in (back / "upper", back / "work", layer):
        folder.mkdir(parents=True)
    return layer


def _make_whiteout(tree: _Tree, rel: str) -> None:
    """An overlayfs whiteout (a character device 0/0) at rel in the layer tree: /usr{rel} is gone."""
    parent, name = tree.split(rel)
    with _doing(f"making a whiteout for /usr{rel} in {tree.root}"):
        os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)


def _apply_as_layer(sysroot: Sysroot, plan: LivePlan, progress: Progress | None) -> None:
    """Make the live /usr the target in one mount: link each new file's repository object into a
    layer in the backing folder, then mount the live overlay with that layer between its (empty)
    upper layer and /usr.

    No file is written: a bare repository's object is the file, as libostree's hardlink checkouts
    use it. An overlay never writes a lower layer (a change to the live /usr copies the file up
    first), so the links are as safe as a deployment's. Nothing is visible before the mount, the
    whole update after it; killed before it, the next run builds the layer again from nothing.
    The steps are the write-through path's (the same fault points, at the same states)."""
    back = sysroot.backing_dir(plan.booted)
    layer = _new_layer(back)
    _step("overlay")
    diff = plan.diff
    tree = _Tree(layer)
    objects = open_dir("objects", dir_fd=sysroot.repo.get_dfd())
    try:
        applier = _Applier(sysroot, tree, "/usr")
        for d in (*_layer_parents(sysroot, plan.target, diff), *diff.added_dirs):
            applier.make_dir(d)
        files = plan.files.added_files  # reported as the write-through path reports them
        db = diff.under(str(plan.dbpath))
        rpmdb = (*db.added_files, *db.changed_files)
        linked = 0
        for i, f in enumerate((*files, *rpmdb)):
            checkpoint()
            obj = f"{f.checksum[:2]}/{f.checksum[2:]}.file"
            parent, name = tree.split(_rel(f.path, "/usr"))
            with _doing(f"linking {layer}{_rel(f.path, '/usr')} to its repository object"):
                os.link(obj, name, src_dir_fd=objects, dst_dir_fd=parent, follow_symlinks=False)
                st = os.stat(obj, dir_fd=objects, follow_symlinks=False)
            if progress and i < len(files):
                linked += st.st_size if stat.S_ISREG(st.st_mode) else 0
                progress(ProgressReport("Applying live", i + 1, len(files), linked, 0, f.path))
            if i == len(files) // 2:
                _step("files-half")
        for path in diff.removed_files:  # only the rpmdb's (_as_layer)
            _make_whiteout(tree, _rel(path, "/usr"))
        tree.sync()
    finally:
        os.close(objects)
        tree.close()
    _step("files")
    _step("rpmdb-new")  # in the layer with the files
    usr = plan.root / "usr"
    _in_running_system(sysroot, "lulayer-mount", lambda: _mount_live_overlay(sysroot, usr, back, layer))
    _step("exchanged")
    _step("removed")


# --- ahead of the commit ------------------------------------------------------------------


@dataclass(frozen=True)
class _AheadLayer:
    """What a compose's upper layers add to the live /usr, as paths under it ("/bin/htop")."""

    dirs: tuple[tuple[str, DirMeta], ...]  # parents first, with the owner, mode and xattrs they have there
    files: tuple[tuple[str, Path], ...]  # each with the file rpm wrote (in the upper layer)
    rpmdb: tuple[tuple[str, Path], ...]  # the rpmdb's files, new or changed
    whiteouts: tuple[str, ...]  # the rpmdb's files that go


def _ahead_layer(upper_usr: Path, upper_etc: Path, live_usr: Path, db: str) -> _AheadLayer | None:
    """What the upper layers (of the compose's root and /etc, the latter /usr/etc) add to live_usr,
    or None when they do more than add: a path that changes type, a removal outside the rpmdb (db,
    under /usr), anything under /lib/modules. A file live_usr has already is left out: the commit
    is checked to keep it as it is (_ahead_matches)."""
    dirs: list[tuple[str, DirMeta]] = []
    files: list[tuple[str, Path]] = []
    rpmdb: list[tuple[str, Path]] = []
    whiteouts: list[str] = []

    def walk(src: str, rel: str, live: bool) -> bool:
        # The entries' types come from the folder (d_type): a new package's thousands of files
        # cost no stat each; folders and special files are stat'ed.
        with os.scandir(src) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            path = f"{rel}/{e.name}"
            if path.startswith("/lib/modules/"):
                return False  # the running kernel's may be among them: check_live_change decides
            in_db = path.startswith(db + "/")
            have = None
            if live:
                with suppress(FileNotFoundError):
                    have = os.lstat(f"{live_usr}{path}")
            if e.is_dir(follow_symlinks=False):
                if is_opaque(e.path) or (have is not None and not stat.S_ISDIR(have.st_mode)):
                    return False
                st = e.stat(follow_symlinks=False)
                dirs.append((path, DirMeta("", st.st_mode, st.st_uid, st.st_gid, own_xattrs(e.path))))
                if not walk(e.path, path, have is not None):
                    return False
            elif not (e.is_file(follow_symlinks=False) or e.is_symlink()):
                if not (in_db and is_whiteout(e.stat(follow_symlinks=False))):
                    return False  # a whiteout outside the rpmdb, a device, a fifo, a socket
                whiteouts.append(path)
            elif in_db:
                if not e.name.endswith(SQLITE_RUNTIME):  # the open database's, never committed
                    rpmdb.append((path, Path(e.path)))
            elif have is None:
                files.append((path, Path(e.path)))
        return True

    if upper_usr.is_dir() and not walk(str(upper_usr), "", True):
        return None
    if upper_etc.is_dir() and os.listdir(upper_etc):
        # The commit gives /usr/etc the owner, mode and xattrs of this upper layer's folder.
        have_etc = os.path.lexists(f"{live_usr}/etc")
        st = os.lstat(upper_etc)
        if (have_etc and not os.path.isdir(f"{live_usr}/etc")) or is_opaque(upper_etc):
            return None
        dirs.append(("/etc", DirMeta("", st.st_mode, st.st_uid, st.st_gid, own_xattrs(str(upper_etc)))))
        if not walk(str(upper_etc), "/etc", have_etc):
            return None
    return _AheadLayer(tuple(dirs), tuple(files), tuple(rpmdb), tuple(whiteouts))


def mount_ahead(sysroot: Sysroot, upper_root: Path, upper_etc: Path) -> bool:
    """Make what a compose's rpm transaction wrote live now, before its commit is written; returns
    whether it did. The live update to the commit (apply_live) then only checks that the layer holds
    the commit's new files, and records it.

    Only for the first live update of the boot (no overlay on /usr, nothing live), when the
    transaction only adds (_ahead_layer): each new file rpm wrote is hardlinked into the layer of
    _apply_as_layer and mounted the same way; the commit adopts those same files as its objects.
    From the state's record (ahead) until the live update to the commit is recorded in progress, a
    kill leaves nothing for the next command to finish (no commit, or no deployment staged for it):
    the next command takes the layer back (finish_interrupted), as apply-live --reset does."""
    booted = sysroot.booted()
    st = live_state.read_state(sysroot, booted)
    root = live_root(sysroot, booted)
    usr = root / "usr"
    db = str(tree_dbpath(root))
    if (st.live or st.transient is not None or not db.startswith("/usr/")
            or not _layer_possible(sysroot, booted, root, os.stat(upper_root).st_dev)
            or (usr / "etc" / "selinux" / "config").exists()):  # the commit labels its files (compose._modifier)
        return False
    layout = _ahead_layer(upper_root / "usr", upper_etc, usr, _rel(db, "/usr"))
    if layout is None:
        return False
    checkpoint()
    reached(Stage.LIVE_AHEAD)
    with critical():
        live_state.write_state(sysroot, booted, replace(st, ahead=True))
    _step("ahead-marked")
    try:
        _mount_ahead_layer(sysroot, booted, usr, layout)
    except (OSError, _Failed, LiveApplyError) as e:
        # Nothing needs it: the update goes live from its commit instead.
        _log.debug("the new files could not go live ahead of their commit: %s", e)
        take_back_ahead(sysroot)
        return False
    _step("ahead-mounted")
    _log.debug("live ahead of the commit: %d files linked from the compose", len(layout.files))
    return True


def _mount_ahead_layer(sysroot: Sysroot, booted: Deployment, usr: Path, layout: _AheadLayer) -> None:
    back = sysroot.backing_dir(booted)
    layer = _new_layer(back)
    tree = _Tree(layer)
    try:
        for path, meta in layout.dirs:
            parent, name = tree.split(path)
            with _doing(f"creating the directory {layer}{path}"):
                os.mkdir(name, 0o700, dir_fd=parent)
                _set_dir_meta_at(parent, name, meta)
        new = len(layout.files)
        for i, (path, src) in enumerate((*layout.files, *layout.rpmdb)):
            checkpoint()
            parent, name = tree.split(path)
            try:  # not _doing: its context manager and message were a third of this loop's time
                if i >= new:  # the rpmdb's files were copied up: not the new files rpm made
                    for k in os.listxattr(src, follow_symlinks=False):
                        if k.startswith(OVERLAY_XATTR_PREFIX):
                            os.removexattr(src, k, follow_symlinks=False)
                os.link(src, name, dst_dir_fd=parent, follow_symlinks=False)
            except OSError as e:
                raise _Failed(f"linking {layer}{path} to {src}", e) from e
            if i == new // 2:
                _step("ahead-half")
        for path in layout.whiteouts:
            _make_whiteout(tree, path)
        tree.sync()
    finally:
        tree.close()
    _in_running_system(sysroot, "lulayer-mount", lambda: _mount_live_overlay(sysroot, usr, back, layer))


def take_back_ahead(sysroot: Sysroot) -> LiveResult | None:
    """Take back what mount_ahead made live when no live update to its commit is recorded: the
    install stopped before it (failed, refused, killed). None when nothing is ahead."""
    st = live_state.read_state(sysroot, sysroot.booted())
    if not st.ahead or st.inprogress is not None:
        return None
    _log.debug("taking back what went live ahead of its commit")
    return reset(sysroot)


def _ahead_matches(sysroot: Sysroot, plan: LivePlan) -> bool:
    """Whether the layer mount_ahead mounted is the one _apply_as_layer would make for plan: the
    same new files (the same inodes, or the same owner, mode, xattrs and content), its folders
    with the target's owner, mode and xattrs, the rpmdb's removed files hidden, nothing else.
    A layer that cannot be read whole (a folder the target lacks, a file gone) does not match."""
    try:
        return _layer_holds(sysroot, plan)
    except (OSError, LiveApplyError) as e:
        _log.debug("the layer live ahead of %s cannot be checked: %s", plan.target, e)
        return False


def _layer_holds(sysroot: Sysroot, plan: LivePlan) -> bool:
    info = mount_at(plan.root / "usr")
    if info is None or not _is_ours(sysroot, plan.booted, info) or not _only_adds(plan):
        return False
    layer = sysroot.backing_dir(plan.booted) / LAYER
    diff = plan.diff
    db = diff.under(str(plan.dbpath))
    db_rel = _rel(str(plan.dbpath), "/usr")
    added = {_rel(f.path, "/usr"): f.checksum for f in plan.files.added_files}
    # All of the target's rpmdb: rpm may have rewritten files of it that did not change.
    db_files = {_rel(f.path, "/usr"): f.checksum for f in _commit_dir_files(sysroot, plan.target, plan.dbpath)}
    db_new = {_rel(f.path, "/usr") for f in (*db.added_files, *db.changed_files)}
    files: list[str] = []
    dirs: list[str] = []
    whiteouts: set[str] = set()

    def walk(rel: str) -> None:
        with os.scandir(f"{layer}{rel}") as it:
            for e in it:
                path = f"{rel}/{e.name}"
                if e.is_dir(follow_symlinks=False):
                    dirs.append(path)
                    walk(path)
                elif is_whiteout(e.stat(follow_symlinks=False)):
                    whiteouts.add(path)
                else:
                    files.append(path)

    walk("")
    in_db = {f for f in files if f.startswith(db_rel + "/")}
    if set(files) - in_db != added.keys() or not db_new <= in_db <= db_files.keys():
        return False
    if not {_rel(p, "/usr") for p in db.removed_files} <= whiteouts:
        return False
    if not {_rel(d.path, "/usr") for d in diff.added_dirs} <= set(dirs):
        return False
    metas = dir_metas_at(sysroot.repo, plan.target, [f"/usr{d}" for d in dirs])
    for d in dirs:
        meta = read_dir_meta(sysroot.repo, metas[f"/usr{d}"])
        st = os.lstat(f"{layer}{d}")
        if (st.st_mode, st.st_uid, st.st_gid, own_xattrs(f"{layer}{d}")) != (
                meta.mode, meta.uid, meta.gid, tuple(sorted(meta.xattrs))):
            return False
    objects = Path(sysroot.repo.get_path().get_path()) / "objects"
    want = {**added, **{f: db_files[f] for f in in_db}}
    return all(_same_file(f"{layer}{path}", f"{objects}/{c[:2]}/{c[2:]}.file") for path, c in want.items())


def _report_layer(progress: Progress, layer: Path, added: tuple[FileEntry, ...]) -> None:
    """Report the live update as done: the files the layer added, and their size."""
    size = 0
    for f in added:
        st = os.lstat(f"{layer}{_rel(f.path, '/usr')}")
        size += st.st_size if stat.S_ISREG(st.st_mode) else 0
    progress(ProgressReport("Applying live", len(added), len(added), size, 0, added[-1].path if added else ""))


def _same_file(a: str, b: str) -> bool:
    """Whether a and b are one file, or files of the same type, owner, mode, xattrs and content."""
    sa, sb = os.lstat(a), os.lstat(b)
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if ((sa.st_mode, sa.st_uid, sa.st_gid, sa.st_size) != (sb.st_mode, sb.st_uid, sb.st_gid, sb.st_size)
            or own_xattrs(a) != own_xattrs(b)):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _stopped(target: str, e: OSError | _Failed) -> LiveApplyError:
    """The error of a live update an OSError stopped; only a full disk is told to free space."""
    if isinstance(e, _Failed):
        err, what = e.error, e.what
    else:  # an operation no _doing names
        err, what = e, "a file-system call" + (f" on {e.filename}" if e.filename else "")
    again = "run `lulayer apply-live` to finish it, or `lulayer apply-live --reset`"
    hint = f"free space, then {again}" if err.errno in (errno.ENOSPC, errno.EDQUOT) else f"once that is fixed, {again}"
    return LiveApplyError(f"the live update to {target[:12]} stopped: {what} failed: [Errno {err.errno}] "
                          f"{err.strerror or err}", hint=hint)


@dataclass(frozen=True)
class LivePlan:
    """A live update of the booted deployment to target, worked out and not begun: what
    check_live passed, which apply_live takes back instead of working it out again."""

    booted: Deployment
    state: live_state.LiveState
    target: str
    root: Path
    dbpath: PurePosixPath
    diff: TreeDiff  # the live commit's /usr against the target's
    changes: PackageChanges

    @property
    def source(self) -> str:
        return self.state.commit

    @property
    def files(self) -> TreeDiff:
        """The diff but the rpmdb, which is swapped on its own."""
        return self.diff.outside(str(self.dbpath))


def _plan(sysroot: Sysroot, target: str, checked: LivePlan | None = None) -> LivePlan | None:
    """The live update to target; None when the live /usr already is target. checked: a plan
    worked out before, taken as it is if it is to target from the live state there is now."""
    booted = sysroot.booted()
    st = live_state.read_state(sysroot, booted)
    if st.inprogress and st.inprogress != target:
        raise LiveApplyError(
            f"a live update toward {st.inprogress[:12]} was interrupted",
            hint="run `lulayer apply-live` to finish it, or `lulayer apply-live --reset`",
        )
    if st.commit == target and st.inprogress is None:
        return None
    if (checked is not None and checked.target == target and checked.state == st
            and checked.booted.checksum == booted.checksum):
        return checked
    root = live_root(sysroot, booted)
    dbpath = tree_dbpath(root)
    diff = diff_commits(sysroot.repo, st.commit, target, "/usr")
    changes = PackageChanges.between(commit_packages(sysroot.repo, st.commit, dbpath),
                                     commit_packages(sysroot.repo, target, dbpath))
    return LivePlan(booted, st, target, root, dbpath, diff, changes)


def _check_plan(sysroot: Sysroot, plan: LivePlan, *, allow_replacement: bool, allow_removal: bool) -> None:
    files = plan.files
    type_changes = [] if allow_replacement else _type_changes(sysroot, files, plan.source, plan.target)
    check_live_change(files, plan.changes, _running_kernels(plan.root, sysroot.folder), type_changes,
                      allow_replacement=allow_replacement, allow_removal=allow_removal)


def check_live(sysroot: Sysroot, target: str, *, allow_replacement: bool = False,
               allow_removal: bool = False) -> LivePlan | None:
    """Refuse (LiveRefusedError) a live update to target that apply_live would refuse, before
    anything is written: the caller stages the next boot's deployment only once it passes.
    Returns the plan it passed (None: nothing to check), for apply_live's checked."""
    plan = _plan(sysroot, target)
    if plan is not None and plan.state.inprogress is None:
        _check_plan(sysroot, plan, allow_replacement=allow_replacement, allow_removal=allow_removal)
        return plan
    return None


def apply_live(sysroot: Sysroot, target: str, *, allow_replacement: bool = False,
               allow_removal: bool = False, progress: Progress | None = None,
               transient: live_state.Transient | None = None, checked: LivePlan | None = None) -> LiveResult:
    """Make the live /usr the target commit's; see the module docstring for the steps.
    transient: the packages target holds for the running system only (recorded in the state).
    checked: what check_live returned for target, with flags no more permissive than these."""
    plan = _plan(sysroot, target, checked)
    if plan is None:
        booted = sysroot.booted()
        st = live_state.read_state(sysroot, booted)
        if transient != st.transient:
            live_state.write_state(sysroot, booted, replace(st, transient=transient))
        return LiveResult(target, target, PackageChanges())
    booted, st, root, dbpath, diff, changes = plan.booted, plan.state, plan.root, plan.dbpath, plan.diff, plan.changes
    source, files = plan.source, plan.files
    resumed = st.inprogress is not None
    rpmdb_changed = not diff.under(str(dbpath)).is_empty
    if not resumed and plan is not checked:  # a resumed update was checked when it began
        _check_plan(sysroot, plan, allow_replacement=allow_replacement, allow_removal=allow_removal)
    old_links = vardirs.read_links(root)
    try:
        reached(Stage.LIVE)
        with critical():
            live_state.write_state(sysroot, booted, live_state.begin(st, target, transient))
        _step("marked")
        exchange_ok = True
        ahead = st.ahead and _ahead_matches(sysroot, plan)
        if ahead:
            # Live since mount_ahead; the steps are the layer's, passed at the same state. Reported once
            # checked: a layer taken back was not applied.
            for step in STEPS[1:-1]:
                _step(step)
            if progress:
                _report_layer(progress, sysroot.backing_dir(booted) / LAYER, files.added_files)
        elif st.ahead:
            _log.debug("the files live ahead of %s are not what it holds: it goes live from the commit", target)
            if (info := mount_at(root / "usr")) is not None and _is_ours(sysroot, booted, info):
                _unmount_live(sysroot, booted)
        if ahead or _as_layer(sysroot, plan):
            if not ahead:
                _apply_as_layer(sysroot, plan, progress)
            rpmdb = "switched in with the files, at once" if rpmdb_changed else "unchanged"
        else:
            with writable_usr(sysroot, booted) as (usr, exchange_ok):
                _step("overlay")
                tree = _Tree(usr)
                try:
                    applier = _Applier(sysroot, tree, "/usr")
                    rpmdb = _apply_usr(sysroot, applier, files, target, dbpath, rpmdb_changed=rpmdb_changed,
                                       exchange_ok=exchange_ok, resumed=resumed, progress=progress)
                finally:
                    tree.close()
        etc_added, etc_dirs = _add_etc(sysroot, root, diff)
        etc.record_added(sysroot, booted, root / "etc", etc_added, etc_dirs)
        _step("etc")
    except (OSError, _Failed) as e:
        # The update stays "in progress" and is finished by the next command once the cause
        # is gone; every step so far is safe to redo.
        raise _stopped(target, e) from e
    replaced = bool(files.changed_files or files.removed_files)
    live_state.write_state(sysroot, booted, live_state.finish(st, target, replaced, transient))
    reached(Stage.LIVE_DONE)
    notes = () if exchange_ok or not rpmdb_changed else (f"rpmdb {rpmdb}",)
    next_boot = sysroot.pending()
    config = apply_config(root, diff, old_links, folder=sysroot.folder,
                          next_etc=next_boot.path / "etc" if next_boot is not None else None)
    return LiveResult(
        source=source, target=target, changes=changes,
        added=len(files.added_files), changed=len(files.changed_files), removed=len(files.removed_files),
        rpmdb=rpmdb, etc_added=etc_added, units=config.units, resumed=resumed, notes=notes,
        users=config.users, warnings=config.warnings,
    )


def finish_interrupted(sysroot: Sysroot, say: Callable[[str], None]) -> LiveResult | None:
    """Finish a live update a killed run left in progress, to the same target."""
    booted = sysroot.booted()
    live_state.drop_stale_temps(sysroot, booted)
    st = live_state.read_state(sysroot, booted)
    if st.ahead and st.inprogress is None:
        # Nothing to finish: what went live has no live update to its commit (a line says so, no result).
        say("Taking back the packages an interrupted install made live ahead of its deployment")
        take_back_ahead(sysroot)
        return None
    if st.inprogress is None:
        live_state.drop_stale_refs(sysroot, booted)
        return None
    if st.inprogress == booted.checksum:
        # Back to the booted commit (a reset, or an update to it): dropping the overlay is that.
        say("Finishing the interrupted return of the live /usr to the booted commit")
        return reset(sysroot)
    say(f"Finishing the interrupted live update to {st.inprogress[:12]}")
    return apply_live(sysroot, st.inprogress, allow_replacement=True, allow_removal=True, transient=st.transient)
