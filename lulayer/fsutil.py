"""File-system helpers that work through directory fds.

Everything here is written for trees that may share inodes with an OSTree
repository (hardlinked checkouts): nothing writes through an existing file, and
nothing follows a symlink out of the tree it was asked to work on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# The temporary names write_file_atomic (and the live apply) write beside a target.
TEMP_NAME_RE: Final = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")

StrPath = str | os.PathLike[str]


@contextlib.contextmanager
def suppress_errno(*errnos: int) -> Iterator[None]:
    """Swallow an OSError whose errno is one of errnos; let every other error through."""
    try:
        yield
    except OSError as e:
        if e.errno not in errnos:
            raise


def open_dir(path: StrPath, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> int:
    """Open a directory for use as a dir_fd; the caller closes it."""
    flags = _DIR_FLAGS if follow_symlinks else _DIR_FLAGS | os.O_NOFOLLOW
    return os.open(path, flags, dir_fd=dir_fd)


@contextlib.contextmanager
def opened_dir(
    path: StrPath, *, dir_fd: int | None = None, follow_symlinks: bool = True
) -> Iterator[int]:
    """open_dir as a context manager that closes the fd."""
    fd = open_dir(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    try:
        yield fd
    finally:
        os.close(fd)


def fsync_dir(dirfd_or_path: int | StrPath) -> None:
    """fsync a directory so the entries created or renamed in it are durable."""
    if isinstance(dirfd_or_path, int):
        os.fsync(dirfd_or_path)
        return
    with opened_dir(dirfd_or_path) as fd:
        os.fsync(fd)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a single path component: {name!r}")


def temp_name(name: str) -> str:
    """A fresh name to write beside name before renaming over it (matches TEMP_NAME_RE)."""
    return f".{name[:200]}.{os.urandom(6).hex()}.tmp"


def write_file_atomic(
    dirfd: int,
    name: str,
    data: bytes | Callable[[int], object],
    *,
    mode: int = 0o644,
    uid: int | None = None,
    gid: int | None = None,
    mtime: float | None = None,
    xattrs: Sequence[tuple[str, bytes]] = (),
    sync_dir: bool = True,
    sync: bool = True,
) -> None:
    """Replace dirfd/name with a new inode holding data, durably.

    data is the content, or a function that writes it to the fd it is given. With
    sync=False (and sync_dir=False) the file is not fsynced: for a caller that syncs the
    whole file system once (linux.syncfs) before anything depends on the file.
    A new file is always created and renamed over name: an existing name may be a
    hardlink into an OSTree repository, and writing through it would corrupt the object.
    """
    _check_name(name)
    tmp = temp_name(name)
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
        0o600,
        dir_fd=dirfd,
    )
    try:
        try:
            if callable(data):
                data(fd)
            else:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            if uid is not None or gid is not None:
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            # After chown: chown clears set-id bits and security.capability.
            os.fchmod(fd, stat.S_IMODE(mode))
            _write_xattrs(fd, list(xattrs))
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        with suppress_errno(errno.ENOENT):
            os.unlink(tmp, dir_fd=dirfd)
        raise
    if sync_dir:
        os.fsync(dirfd)


def write_symlink_atomic(dirfd: int, name: str, target: str, *, uid: int, gid: int) -> None:
    """Replace dirfd/name with a new symlink to target owned by uid:gid, made beside it and
    renamed over it (so name is never missing, and nothing is written through the old one)."""
    tmp = temp_name(name)
    os.symlink(target, tmp, dir_fd=dirfd)
    try:
        os.chown(tmp, uid, gid, dir_fd=dirfd, follow_symlinks=False)
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        with suppress_errno(errno.ENOENT):
            os.unlink(tmp, dir_fd=dirfd)
        raise


def remove_stale_temps(dirfd: int, name: str) -> None:
    """Remove the temp files a killed write_file_atomic of name left beside it. Only for a
    record that one writer at a time writes (under the sysroot lock): another writer's temp
    file, in flight, would go too."""
    _check_name(name)
    prefix = f".{name[:200]}."
    for entry in os.listdir(dirfd):
        if entry.startswith(prefix) and len(entry) == len(prefix) + 16 and TEMP_NAME_RE.match(entry):
            with suppress_errno(errno.ENOENT):
                os.unlink(entry, dir_fd=dirfd)


def write_record(dirfd: int, name: str, data: bytes, *, sync_dir: bool = True) -> None:
    """write_file_atomic for a record written under the sysroot lock, first removing what a
    killed earlier write of it left."""
    remove_stale_temps(dirfd, name)
    write_file_atomic(dirfd, name, data, sync_dir=sync_dir)


def remove_tree_at(dirfd: int, name: str) -> None:
    """rm -rf dirfd/name without following symlinks; a missing name is not an error."""
    _check_name(name)
    try:
        st = os.lstat(name, dir_fd=dirfd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with suppress_errno(errno.ENOENT):
            os.unlink(name, dir_fd=dirfd)
        return
    try:
        # O_NOFOLLOW: if name was swapped for a symlink since lstat, this fails (ELOOP/ENOTDIR).
        fd = open_dir(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    try:
        _empty_dir(fd)
    finally:
        os.close(fd)
    with suppress_errno(errno.ENOENT):
        os.rmdir(name, dir_fd=dirfd)


def _empty_dir(fd: int) -> None:
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        if is_dir:
            remove_tree_at(fd, name)
        else:
            with suppress_errno(errno.ENOENT):
                os.unlink(name, dir_fd=fd)


def _write_xattrs(target: int | str, xattrs: list[tuple[str, bytes]]) -> None:
    follow = isinstance(target, int)
    for n, v in xattrs:
        os.setxattr(target, n, v, follow_symlinks=follow)


def tree_usage(path: Path, *, linked_elsewhere: bool = False) -> int:
    """The bytes of disk that removing the tree at path frees: its folders, and each other inode
    whose every link is inside it (a hardlink to elsewhere frees nothing; with linked_elsewhere
    it is counted too, once); symlinks are not followed; 0 when path is missing."""
    seen: dict[tuple[int, int], int] = {}  # links found inside
    sizes: dict[tuple[int, int], tuple[int, int]] = {}  # bytes, links it has

    def walk(p: str) -> None:
        with os.scandir(p) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                key = (st.st_dev, st.st_ino)
                seen[key] = seen.get(key, 0) + 1
                # A folder's st_nlink counts its subfolders' "..": only its own name matters.
                sizes[key] = (st.st_blocks * 512, 1 if stat.S_ISDIR(st.st_mode) else st.st_nlink)
                if e.is_dir(follow_symlinks=False):
                    walk(e.path)

    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(top.st_mode):
        return top.st_blocks * 512 if top.st_nlink == 1 or linked_elsewhere else 0
    walk(os.fspath(path))
    return top.st_blocks * 512 + sum(size for key, (size, nlink) in sizes.items()
                                     if linked_elsewhere or seen[key] >= nlink)


def remove_path(path: Path) -> None:
    """remove_tree_at for a path: rm -rf path, through its parent's fd."""
    with opened_dir(path.parent) as parent:
        remove_tree_at(parent, path.name)
