"""/etc after a live apply: what lulayer wrote there, and the next deployment's /etc.

A live apply adds the target's new config files (package %config files, files
scriptlets wrote at compose time) to the running /etc. libostree's three-way
/etc merge, when the next deployment is written, takes every file of the merge
deployment's /etc that its /usr/etc lacks, or holds with other content, for the
administrator's, so it would keep lulayer's copy over a later version of the
package and after the package is gone. So each file a live apply writes is
recorded with a digest of what was written, and after libostree's merge
(`fix_merged_etc`, called by layering/deploy.py) a recorded file that still
holds what lulayer wrote is the package's: it becomes the new deployment's
/usr/etc version, or goes when that lacks it. A file someone changed since is
kept; where the new deployment ships another version of it, that version is
written beside it as NAME.rpmnew, as rpm does for a %config(noreplace) file.

The record is the deployment's, not the boot's: it lives beside the
deployment's live backing folder (Sysroot.etc_record), because the /etc it
describes outlives a reboot (a crash before the next deployment was written
boots the same deployment, with lulayer's files in its /etc, and the next
deployment is then merged from it). It goes when the deployment goes
(drop_stale_backing in apply/live.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lulayer.errors import SysrootError
from lulayer.fsutil import (
    open_dir,
    opened_dir,
    remove_stale_temps,
    suppress_errno,
    write_file_atomic,
    write_record,
    write_symlink_atomic,
)
from lulayer.sysroot import ETC_RECORD, Deployment, Sysroot

RPMNEW = ".rpmnew"
DIR = "dir"  # a folder a live apply made for the files it added


@dataclass(frozen=True)
class EtcFix:
    """What fix_merged_etc did to a new deployment's /etc (paths as /etc/NAME)."""

    replaced: tuple[str, ...] = ()  # unchanged since a live apply wrote it: now the package's version
    removed: tuple[str, ...] = ()  # unchanged, and the new deployment does not ship it (or an empty folder)
    kept: tuple[str, ...] = ()  # changed since (the administrator's)
    rpmnew: tuple[str, ...] = ()  # the new version written beside a kept file


def read_added(sysroot: Sysroot, d: Deployment) -> dict[str, str]:
    """The /etc files live applies added to deployment d's /etc: path -> digest of what was written."""
    path = sysroot.etc_record(d)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise SysrootError(f"{path} is unreadable: {e}", hint="remove it; lulayer only loses track of /etc "
                                                              "files live applies added") from e
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SysrootError(f"{path} is not a record of /etc files",
                           hint="remove it; lulayer only loses track of /etc files live applies added")
    return data


def added_files(sysroot: Sysroot, d: Deployment) -> tuple[str, ...]:
    """The files (not folders) live applies added to d's /etc that it still records."""
    return tuple(sorted(p for p, w in read_added(sysroot, d).items() if w != DIR))


def record_added(sysroot: Sysroot, d: Deployment, etc: Path, paths: Iterable[str],
                 dirs: Iterable[str] = ()) -> None:
    """Add the files at paths (/etc/NAME), as they are now under etc (d's /etc), and the folders
    made for them, dirs, to d's record."""
    paths, dirs = list(paths), list(dirs)
    if not paths and not dirs:
        return
    added = read_added(sysroot, d)
    added.update(dict.fromkeys(dirs, DIR))
    with opened_dir(etc) as etc_fd:
        for p in paths:
            with _parent(etc_fd, _rel(p)) as (parent, name):
                digest = _digest(parent, name) if parent is not None else None
            if digest is not None:
                added[p] = digest
    record = sysroot.etc_record(d)
    record.parent.mkdir(parents=True, exist_ok=True)
    with opened_dir(record.parent) as fd:
        write_record(fd, record.name, json.dumps(added, indent=1, sort_keys=True).encode() + b"\n")


def drop_record_at(backing: int) -> None:
    """Remove the record in the open backing folder of a deployment that is gone."""
    remove_stale_temps(backing, ETC_RECORD)
    with suppress_errno(errno.ENOENT):
        os.unlink(ETC_RECORD, dir_fd=backing)


def fix_merged_etc(new_root: Path, added: Mapping[str, str]) -> EtcFix:
    """After libostree merged a deployment's /etc into the new deployment at new_root: give back
    to the package each file a live apply wrote into that /etc (added: its read_added) that
    nobody changed since (see the module docstring). Files are replaced by renaming a new inode over them, never written
    through (a file of /etc is never a hardlink into the repository; were it one, it is not
    written either)."""
    if not added:
        return EtcFix()
    replaced: list[str] = []
    removed: list[str] = []
    kept: list[str] = []
    rpmnew: list[str] = []
    with opened_dir(new_root / "etc") as etc, opened_dir(new_root / "usr" / "etc") as usr_etc:
        files = {p: w for p, w in added.items() if w != DIR}
        for path, written in sorted(files.items()):
            rel = _rel(path)
            with _parent(etc, rel) as (parent, name), _parent(usr_etc, rel) as (src, _):
                now = _digest(parent, name) if parent is not None else None
                if parent is None or now is None:
                    continue  # gone (with its folder), or not a file any more: someone else's doing
                shipped = _digest(src, name) if src is not None else None
                if now == written:  # nobody changed it: the package's
                    if src is None or shipped is None:
                        with suppress_errno(errno.ENOENT):
                            os.unlink(name, dir_fd=parent)
                        removed.append(path)
                        continue
                    if shipped != now:
                        _copy(src, parent, name, name)
                    replaced.append(path)
                    continue
                kept.append(path)
                # rpm writes NAME.rpmnew when the package's version changed and the file on disk
                # is neither the old nor the new version (lib/rpmfi.c, rpmfilesDecideFate).
                if src is not None and shipped is not None and shipped not in (written, now):
                    _copy(src, parent, name, name + RPMNEW)
                    rpmnew.append(path + RPMNEW)
        # The folders made for them, deepest first: gone when empty and not shipped.
        for path in sorted((p for p, w in added.items() if w == DIR), reverse=True):
            with _parent(etc, _rel(path)) as (parent, name), _parent(usr_etc, _rel(path)) as (src, _):
                if parent is None or (src is not None and os.path.lexists(f"/proc/self/fd/{src}/{name}")):
                    continue
                with suppress_errno(errno.ENOENT, errno.ENOTEMPTY, errno.ENOTDIR, errno.EEXIST):
                    os.rmdir(name, dir_fd=parent)
                    removed.append(path)
        os.fsync(etc)
    return EtcFix(tuple(replaced), tuple(removed), tuple(kept), tuple(rpmnew))


def _rel(path: str) -> str:
    """/etc/a/b -> a/b; refuses what is not under /etc."""
    p = PurePosixPath(path)
    if p.parts[:2] != ("/", "etc") or len(p.parts) < 3 or ".." in p.parts:
        raise SysrootError(f"{path} is not a file under /etc", hint="the /etc record is corrupt: remove it")
    return str(PurePosixPath(*p.parts[2:]))


@contextmanager
def _parent(root: int, rel: str) -> Iterator[tuple[int | None, str]]:
    """The open folder holding rel under root (None when a folder on the way is missing or not
    a folder), and rel's name; symlinks on the way are not followed."""
    parts = PurePosixPath(rel).parts
    fds: list[int] = []
    fd: int | None = root
    try:
        for part in parts[:-1]:
            try:
                fd = open_dir(part, dir_fd=fd, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise
                fd = None
                break
            fds.append(fd)
        yield fd, parts[-1]
    finally:
        for f in fds:
            os.close(f)


def _digest(parent: int, name: str) -> str | None:
    """sha256 of a regular file's content, or of a symlink's target; None for anything else."""
    try:
        st = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "symlink:" + hashlib.sha256(os.readlink(name, dir_fd=parent).encode()).hexdigest()
    if not stat.S_ISREG(st.st_mode):
        return None
    h = hashlib.sha256()
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest()


def _copy(src_parent: int, dest_parent: int, name: str, dest_name: str) -> None:
    """Copy src_parent/name (file or symlink, with owner, mode and xattrs) to dest_parent/dest_name
    as a new inode renamed into place."""
    st = os.lstat(name, dir_fd=src_parent)
    if stat.S_ISLNK(st.st_mode):
        write_symlink_atomic(dest_parent, dest_name, os.readlink(name, dir_fd=src_parent), uid=st.st_uid,
                             gid=st.st_gid)
        return
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_parent)
    try:
        xattrs = [(k, os.getxattr(fd, k)) for k in os.listxattr(fd)]

        def content(out: int) -> None:
            while chunk := os.read(fd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]

        write_file_atomic(dest_parent, dest_name, content, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
                          xattrs=xattrs, sync_dir=False)
    finally:
        os.close(fd)
