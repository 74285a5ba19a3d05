"""The difference between two OSTree commits, from content checksums.

OSTree trees are Merkle trees: a directory's dirtree checksum covers everything
below it, so two subtrees with the same (dirtree, dirmeta) pair are identical and
the walk never descends into them. The cost follows the size of the change, not
the size of the tree.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any, Final

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from lulayer.errors import LiveApplyError  # noqa: E402

_CHUNK: Final = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    """A regular file or symlink in a commit."""

    path: str  # absolute in the tree, e.g. "/usr/bin/htop"
    checksum: str  # its content object checksum


@dataclass(frozen=True)
class DirEntry:
    """A directory in a commit."""

    path: str
    meta_checksum: str  # its dirmeta checksum


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _at_or_below_any(path: str, prefixes: Collection[str]) -> bool:
    return path in prefixes or any(str(p) in prefixes for p in PurePosixPath(path).parents)


@dataclass(frozen=True)
class TreeDiff:
    """What changes from one commit to another.

    Apply it in this order: removed_files, removed_dirs (children first), then
    added_dirs (parents first), added_files, changed_files, changed_dirs. A path
    that turned from a file into a directory (or back) is in both a removed and an
    added list (see retyped), so removals must go first.

    replaced_dirs names the directories of both commits that keep none of their
    entries: every file of the old one is removed or changed and none of its
    subdirectories stays one. Their content is in the other lists too; they say
    where the new content can be built beside and swapped in whole, at no more cost
    than writing it in place.
    """

    added_dirs: tuple[DirEntry, ...] = ()  # parents before children
    added_files: tuple[FileEntry, ...] = ()  # includes files inside added dirs
    changed_files: tuple[FileEntry, ...] = ()  # same path, new checksum (the new entry)
    removed_files: tuple[str, ...] = ()  # includes files inside removed dirs
    removed_dirs: tuple[str, ...] = ()  # children before parents
    changed_dirs: tuple[DirEntry, ...] = ()  # same path, dirmeta differs (the new meta)
    replaced_dirs: tuple[DirEntry, ...] = ()  # in both, none of the old entries kept (the new meta)

    @property
    def retyped(self) -> frozenset[str]:
        """The paths that are a directory in one commit and a file or symlink in the other."""
        added = {e.path for e in self.added_dirs} | {e.path for e in self.added_files}
        return frozenset(added & {*self.removed_files, *self.removed_dirs})

    @property
    def is_empty(self) -> bool:
        return not any(self.counts().values())

    def counts(self) -> dict[str, int]:
        return {
            "added_dirs": len(self.added_dirs),
            "added_files": len(self.added_files),
            "changed_files": len(self.changed_files),
            "removed_files": len(self.removed_files),
            "removed_dirs": len(self.removed_dirs),
            "changed_dirs": len(self.changed_dirs),
        }

    def _select(self, keep: Callable[[str], bool]) -> TreeDiff:
        return TreeDiff(
            added_dirs=tuple(e for e in self.added_dirs if keep(e.path)),
            added_files=tuple(e for e in self.added_files if keep(e.path)),
            changed_files=tuple(e for e in self.changed_files if keep(e.path)),
            removed_files=tuple(x for x in self.removed_files if keep(x)),
            removed_dirs=tuple(x for x in self.removed_dirs if keep(x)),
            changed_dirs=tuple(e for e in self.changed_dirs if keep(e.path)),
            replaced_dirs=tuple(e for e in self.replaced_dirs if keep(e.path)),
        )

    def without(self, paths: Collection[str]) -> TreeDiff:
        """The part of the diff at none of paths nor below them."""
        skip = set(paths)
        return self._select(lambda path: not _at_or_below_any(path, skip))

    def under(self, prefix: str) -> TreeDiff:
        """The part of the diff at prefix or below it."""
        p = "/" + prefix.strip("/") if prefix.strip("/") else "/"
        return self._select(lambda path: _under(path, p))

    def outside(self, prefix: str) -> TreeDiff:
        """The part of the diff neither at prefix nor below it."""
        p = "/" + prefix.strip("/")
        return self._select(lambda path: not _under(path, p))

    def paths(self) -> frozenset[str]:
        """Every path the diff touches."""
        return frozenset(
            [e.path for e in (*self.added_dirs, *self.changed_dirs)]
            + [e.path for e in (*self.added_files, *self.changed_files)]
            + list(self.removed_files)
            + list(self.removed_dirs)
        )


@dataclass
class WalkStats:
    """How much of the repository a diff read; for tests and benchmarks."""

    dirtrees_loaded: int = 0


def _join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def _csum(v: GLib.Variant) -> str:
    return str(OSTree.checksum_from_bytes_v(v))


def _files(tree: GLib.Variant) -> dict[str, str]:
    arr = tree.get_child_value(0)
    out: dict[str, str] = {}
    for i in range(arr.n_children()):
        e = arr.get_child_value(i)
        out[e.get_child_value(0).get_string()] = _csum(e.get_child_value(1))
    return out


def _dirs(tree: GLib.Variant) -> dict[str, tuple[str, str]]:
    arr = tree.get_child_value(1)
    out: dict[str, tuple[str, str]] = {}
    for i in range(arr.n_children()):
        e = arr.get_child_value(i)
        out[e.get_child_value(0).get_string()] = (
            _csum(e.get_child_value(1)),
            _csum(e.get_child_value(2)),
        )
    return out


def _load(repo: OSTree.Repo, objtype: OSTree.ObjectType, checksum: str, what: str) -> Any:
    try:
        _, v = repo.load_variant(objtype, checksum)
    except GLib.Error as e:
        raise LiveApplyError(
            f"cannot read {what} {checksum} from the repository: {e.message}",
            hint="the repository is incomplete or damaged; run `ostree fsck`",
        ) from e
    return v


@dataclass
class _Walk:
    repo: OSTree.Repo
    stats: WalkStats
    added_dirs: list[DirEntry] = field(default_factory=list)
    added_files: list[FileEntry] = field(default_factory=list)
    changed_files: list[FileEntry] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    removed_dirs: list[str] = field(default_factory=list)
    changed_dirs: list[DirEntry] = field(default_factory=list)
    replaced_dirs: list[DirEntry] = field(default_factory=list)

    def tree(self, checksum: str) -> Any:
        self.stats.dirtrees_loaded += 1
        return _load(self.repo, OSTree.ObjectType.DIR_TREE, checksum, "dirtree")

    def add(self, path: str, tree_csum: str, meta_csum: str) -> None:
        self.added_dirs.append(DirEntry(path, meta_csum))
        t = self.tree(tree_csum)
        for name, csum in _files(t).items():
            self.added_files.append(FileEntry(_join(path, name), csum))
        for name, (sub_tree, sub_meta) in _dirs(t).items():
            self.add(_join(path, name), sub_tree, sub_meta)

    def remove(self, path: str, tree_csum: str) -> None:
        t = self.tree(tree_csum)
        for name in _files(t):
            self.removed_files.append(_join(path, name))
        for name, (sub_tree, _) in _dirs(t).items():
            self.remove(_join(path, name), sub_tree)
        self.removed_dirs.append(path)

    def compare(self, path: str, a: tuple[str, str], b: tuple[str, str], *, top: bool = False) -> None:
        """Both sides are directories at path."""
        if a[1] != b[1]:
            self.changed_dirs.append(DirEntry(path, b[1]))
        if a[0] == b[0]:
            return  # same content checksum: the whole subtree is identical
        ta, tb = self.tree(a[0]), self.tree(b[0])
        # A name can't be a file and a dir in one tree, so when the file lists are
        # equal no name changed kind, and the dir lists can be compared on their own.
        old_files, old_dirs = ta.get_child_value(0), ta.get_child_value(1)
        same_files = old_files.equal(tb.get_child_value(0))
        same_dirs = old_dirs.equal(tb.get_child_value(1))
        fa, fb = ({}, {}) if same_files else (_files(ta), _files(tb))
        da, db = ({}, {}) if same_dirs else (_dirs(ta), _dirs(tb))
        kept = ((same_files and old_files.n_children() > 0) or (same_dirs and old_dirs.n_children() > 0)
                or any(fb.get(name) == csum for name, csum in fa.items()) or not da.keys().isdisjoint(db))
        if not kept and not top and (old_files.n_children() or old_dirs.n_children()):
            self.replaced_dirs.append(DirEntry(path, b[1]))
        for name in sorted(fa.keys() | fb.keys() | da.keys() | db.keys()):
            p = _join(path, name)
            in_fa, in_fb, in_da, in_db = name in fa, name in fb, name in da, name in db
            if in_fa and in_fb:
                if fa[name] != fb[name]:
                    self.changed_files.append(FileEntry(p, fb[name]))
                continue
            if in_da and in_db:
                self.compare(p, da[name], db[name])
                continue
            if in_fa:
                self.removed_files.append(p)
            elif in_da:
                self.remove(p, da[name][0])
            if in_fb:
                self.added_files.append(FileEntry(p, fb[name]))
            elif in_db:
                self.add(p, *db[name])

    def result(self) -> TreeDiff:
        return TreeDiff(
            added_dirs=tuple(self.added_dirs),
            added_files=tuple(self.added_files),
            changed_files=tuple(self.changed_files),
            removed_files=tuple(self.removed_files),
            removed_dirs=tuple(self.removed_dirs),
            changed_dirs=tuple(self.changed_dirs),
            replaced_dirs=tuple(self.replaced_dirs),
        )


def _resolve_commit(repo: OSTree.Repo, ref_or_commit: str) -> str:
    try:
        _, rev = repo.resolve_rev(ref_or_commit, False)
    except GLib.Error as e:
        raise LiveApplyError(f"no commit or ref {ref_or_commit!r} in the repository") from e
    return str(rev)


def _find_dir(walk: _Walk, commit: str, subpath: str) -> tuple[str, str] | None:
    """The (dirtree, dirmeta) checksums of subpath in commit; None if it isn't a dir."""
    c = _load(walk.repo, OSTree.ObjectType.COMMIT, commit, "commit")
    here = (_csum(c.get_child_value(6)), _csum(c.get_child_value(7)))
    for part in (p for p in subpath.split("/") if p):
        found = _dirs(walk.tree(here[0])).get(part)
        if found is None:
            return None
        here = found
    return here


def diff_commits(
    repo: OSTree.Repo,
    from_commit: str,
    to_commit: str,
    subpath: str = "/usr",
    *,
    stats: WalkStats | None = None,
) -> TreeDiff:
    """The changes that turn subpath of from_commit into subpath of to_commit.

    Commits may be given as checksums or refs. A subpath that is missing (or not a
    directory) on one side counts as an empty tree there.
    """
    walk = _Walk(repo, stats if stats is not None else WalkStats())
    sub = "/" + subpath.strip("/") if subpath.strip("/") else "/"
    a = _find_dir(walk, _resolve_commit(repo, from_commit), sub)
    b = _find_dir(walk, _resolve_commit(repo, to_commit), sub)
    if a is not None and b is not None:
        walk.compare(sub, a, b, top=True)
    elif a is not None:
        walk.remove(sub, a[0])
    elif b is not None:
        walk.add(sub, *b)
    return walk.result()


class Kind(StrEnum):
    """What an entry of a commit is."""

    FILE = "file"
    SYMLINK = "symlink"
    DIRECTORY = "directory"


def kinds_at(repo: OSTree.Repo, commit: str, paths: Collection[str]) -> dict[str, Kind | None]:
    """What each of paths is in commit (None: no such path)."""
    root = _load_root(repo, commit)
    out: dict[str, Kind | None] = {}
    for path in paths:
        try:
            info = root.resolve_relative_path(path.lstrip("/")).query_info(
                "standard::type", Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS, None)
        except GLib.Error as e:
            if not e.matches(Gio.io_error_quark(), Gio.IOErrorEnum.NOT_FOUND):
                raise LiveApplyError(f"cannot read {path} of commit {commit}: {e.message}",
                                     hint="the repository is incomplete or damaged; run `ostree fsck`") from e
            out[path] = None
            continue
        out[path] = {Gio.FileType.DIRECTORY: Kind.DIRECTORY,
                     Gio.FileType.SYMBOLIC_LINK: Kind.SYMLINK}.get(info.get_file_type(), Kind.FILE)
    return out


def dir_metas_at(repo: OSTree.Repo, commit: str, paths: Collection[str]) -> dict[str, str]:
    """The dirmeta checksum of each of paths, folders of commit."""
    root = _load_root(repo, commit)
    out: dict[str, str] = {}
    for path in paths:
        f = root.resolve_relative_path(path.lstrip("/"))
        try:
            f.ensure_resolved()
            out[path] = f.tree_get_metadata_checksum()
        except GLib.Error as e:
            raise LiveApplyError(f"cannot read the folder {path} of commit {commit}: {e.message}",
                                 hint="the repository is incomplete or damaged; run `ostree fsck`") from e
    return out


def _load_root(repo: OSTree.Repo, commit: str) -> Any:
    try:
        _, root, _ = repo.read_commit(commit, None)
    except GLib.Error as e:
        raise LiveApplyError(f"cannot read commit {commit} from the repository: {e.message}",
                             hint="the repository is incomplete or damaged; run `ostree fsck`") from e
    return root


def _xattr_list(v: GLib.Variant | None) -> tuple[tuple[str, bytes], ...]:
    if v is None:
        return ()
    out = []
    for i in range(v.n_children()):
        kv = v.get_child_value(i)
        name = os.fsdecode(kv.get_child_value(0).get_bytestring())
        out.append((name, bytes(kv.get_child_value(1).get_data_as_bytes().get_data() or b"")))
    return tuple(out)


def _copy_fd(src: int, dest: int) -> int:
    """Copy src from its start to dest at its position; the byte count. sendfile copies in
    the kernel (copy_file_range would too, but from the repository into an overlay it fails
    with EXDEV); read and write where sendfile cannot be used."""
    offset = 0
    try:
        while n := os.sendfile(dest, src, offset, _CHUNK):
            offset += n
        return offset
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS) or offset:
            raise
    while chunk := os.pread(src, _CHUNK, offset):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dest, view):]
        offset += len(chunk)
    return offset


@dataclass(frozen=True)
class ObjectFile:
    """A content object's metadata, and a way to read its content."""

    checksum: str
    mode: int  # full st_mode, file type included
    uid: int
    gid: int
    size: int
    symlink_target: str | None  # set for symlinks, None for regular files
    xattrs: tuple[tuple[str, bytes], ...]
    repo: OSTree.Repo = field(compare=False, repr=False)

    @property
    def is_symlink(self) -> bool:
        return self.symlink_target is not None

    def _open(self) -> Gio.InputStream:
        _, stream, _, _ = _load_file(self.repo, self.checksum)
        if stream is None:
            raise LiveApplyError(f"object {self.checksum} is a symlink, it has no content")
        return stream

    def _open_loose(self) -> int | None:
        """The object's own file in a bare repository (its content as it is), or None."""
        if self.repo.get_mode() != OSTree.RepoMode.BARE:
            return None
        loose = f"objects/{self.checksum[:2]}/{self.checksum[2:]}.file"
        try:
            return os.open(loose, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self.repo.get_dfd())
        except FileNotFoundError:  # not loose here (in a parent repository, say): libostree finds it
            return None

    def write_content(self, fd: int) -> int:
        """Write the file's content to fd at its current position; return the byte count."""
        src = self._open_loose()
        if src is not None:
            try:
                return _copy_fd(src, fd)
            finally:
                os.close(src)
        stream = self._open()
        try:
            if isinstance(stream, Gio.FileDescriptorBased):
                # Bare repositories hand out the object file itself: copy in the kernel.
                return _copy_fd(stream.get_fd(), fd)
            total = 0
            while chunk := stream.read_bytes(_CHUNK, None).get_data():
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    total += n
                    view = view[n:]
            return total
        finally:
            stream.close(None)

    def read_content(self) -> bytes:
        """The whole content, for small files."""
        stream = self._open()
        try:
            parts = []
            while chunk := stream.read_bytes(_CHUNK, None).get_data():
                parts.append(bytes(chunk))
            return b"".join(parts)
        finally:
            stream.close(None)


def _load_file(repo: OSTree.Repo, checksum: str) -> Any:
    try:
        return repo.load_file(checksum, None)
    except GLib.Error as e:
        raise LiveApplyError(
            f"cannot read file object {checksum} from the repository: {e.message}",
            hint="the repository is incomplete or damaged; run `ostree fsck`",
        ) from e


def read_file_object(repo: OSTree.Repo, checksum: str) -> ObjectFile:
    """The metadata of content object checksum; its content is read on demand."""
    _, stream, info, xattrs = _load_file(repo, checksum)
    if stream is not None:
        stream.close(None)
    is_link = info.get_file_type() == Gio.FileType.SYMBOLIC_LINK
    return ObjectFile(
        checksum=checksum,
        mode=info.get_attribute_uint32("unix::mode"),
        uid=info.get_attribute_uint32("unix::uid"),
        gid=info.get_attribute_uint32("unix::gid"),
        size=0 if is_link else info.get_size(),
        symlink_target=info.get_symlink_target() if is_link else None,
        xattrs=_xattr_list(xattrs),
        repo=repo,
    )


@dataclass(frozen=True)
class DirMeta:
    """A dirmeta object: a directory's owner, mode and xattrs."""

    checksum: str
    mode: int  # full st_mode, S_IFDIR included
    uid: int
    gid: int
    xattrs: tuple[tuple[str, bytes], ...]


def _be32(v: int) -> int:
    # dirmeta stores its integers big-endian; GVariant hands them back as native.
    return int(struct.unpack(">I", struct.pack("=I", v))[0])


def read_dir_meta(repo: OSTree.Repo, checksum: str) -> DirMeta:
    v = _load(repo, OSTree.ObjectType.DIR_META, checksum, "dirmeta")
    return DirMeta(
        checksum=checksum,
        uid=_be32(v.get_child_value(0).get_uint32()),
        gid=_be32(v.get_child_value(1).get_uint32()),
        mode=_be32(v.get_child_value(2).get_uint32()),
        xattrs=_xattr_list(v.get_child_value(3)),
    )
