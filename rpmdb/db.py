"""Where a tree keeps its rpmdb, and what it lists.

The rpmdb path is the tree's own: its %_dbpath macro, with symlinks resolved
inside the tree (rpm-ostree lays the database at /usr/share/rpm with
/usr/lib/sysimage/rpm pointing at it; dnf-built bootc images keep it at
/usr/lib/sysimage/rpm). The host's rpm configuration is never consulted:
Debian's rpm would say ~/.rpmdb.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import gi
import rpm

gi.require_version("OSTree", "1.0")
from gi.repository import GLib, OSTree  # noqa: E402

from lulayer.errors import LulayerError  # noqa: E402
from lulayer.rpmdb.model import Package  # noqa: E402

AT_FDCWD = -100

# rpm reads these in this order; the last definition wins.
_MACRO_GLOBS = (
    "usr/lib/rpm/macros",
    "usr/lib/rpm/macros.d/macros.*",
    "usr/etc/rpm/macros*",
    "etc/rpm/macros*",
)
_DBPATH_RE = re.compile(r"^\s*%_dbpath\s+(\S+)\s*$", re.MULTILINE)
_DEFAULT_DBPATHS = ("/usr/lib/sysimage/rpm", "/var/lib/rpm")


def resolve_in_tree(root: Path, path: str) -> PurePosixPath:
    """Resolve path's symlinks as if root were /, never leaving root."""
    parts = list(PurePosixPath(path).parts[1:])
    resolved = PurePosixPath("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / part
        host = root / str(candidate).lstrip("/")
        if host.is_symlink():
            hops += 1
            if hops > 40:
                raise LulayerError(f"too many symlinks resolving {path} in {root}")
            target = PurePosixPath(os.readlink(host))
            if target.is_absolute():
                resolved = PurePosixPath("/")
            parts = list(target.parts[1:] if target.is_absolute() else target.parts) + parts
            continue
        resolved = candidate
    return resolved


def tree_dbpath(root: Path) -> PurePosixPath:
    """The real in-tree directory of root's rpmdb, e.g. /usr/share/rpm."""
    macro: str | None = None
    for pattern in _MACRO_GLOBS:
        for f in sorted(root.glob(pattern)):
            if f.is_file():
                found = _DBPATH_RE.findall(f.read_text(errors="replace"))
                if found:
                    macro = found[-1]
    candidates = (macro,) if macro else _DEFAULT_DBPATHS
    for c in candidates:
        real = resolve_in_tree(root, c)
        if (root / str(real).lstrip("/")).is_dir():
            return real
    raise LulayerError(
        f"{root} has no rpmdb (looked for {', '.join(candidates)})",
        hint="the base image must carry an rpmdb at its %_dbpath",
    )


@contextmanager
def dbpath_macro(dbpath: PurePosixPath | str) -> Iterator[None]:
    """Point librpm's (process-global) %_dbpath at dbpath for the block."""
    rpm.addMacro("_dbpath", str(dbpath))
    try:
        yield
    finally:
        rpm.delMacro("_dbpath")


def read_packages(root: Path, dbpath: PurePosixPath) -> tuple[Package, ...]:
    """Every package in root's rpmdb at dbpath, sorted.

    Opening an sqlite rpmdb writes beside it (-shm, .rpm.lock): call this on a
    copy (see snapshot) unless the tree is yours to write.
    """
    with dbpath_macro(dbpath):
        ts = rpm.TransactionSet(str(root))
        ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
        try:
            pkgs = {
                Package(h[rpm.RPMTAG_NAME], h[rpm.RPMTAG_EPOCH] or 0, h[rpm.RPMTAG_VERSION],
                        h[rpm.RPMTAG_RELEASE], h[rpm.RPMTAG_ARCH] or "noarch")
                for h in ts.dbMatch()
                if h[rpm.RPMTAG_NAME] != "gpg-pubkey"
            }
        except rpm.error as e:
            raise LulayerError(f"cannot read the rpmdb of {root} at {dbpath}: {e}") from e
        finally:
            ts.closeDB()
    return tuple(sorted(pkgs))


def providers(root: Path, dbpath: PurePosixPath, spec: str) -> tuple[Package, ...]:
    """The packages of root's rpmdb a request for spec matches: by a capability they provide
    (their own name is one), a file they own (spec an absolute path) or their full NEVRA, as
    rpm-ostree matches requests against the base (rpmostree_get_matching_packages). Call it
    on a copy (see snapshot), as read_packages."""
    with dbpath_macro(dbpath):
        ts = rpm.TransactionSet(str(root))
        ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
        try:
            headers = list(ts.dbMatch("basenames" if spec.startswith("/") else "providename", spec))
            if not headers:
                headers = [h for h in ts.dbMatch() if _package(h).nevra == spec]
            found = {_package(h) for h in headers if h[rpm.RPMTAG_NAME] != "gpg-pubkey"}
        except rpm.error as e:
            raise LulayerError(f"cannot read the rpmdb of {root} at {dbpath}: {e}") from e
        finally:
            ts.closeDB()
    return tuple(sorted(found))


def _package(h: rpm.hdr) -> Package:
    return Package(h[rpm.RPMTAG_NAME], h[rpm.RPMTAG_EPOCH] or 0, h[rpm.RPMTAG_VERSION], h[rpm.RPMTAG_RELEASE],
                   h[rpm.RPMTAG_ARCH] or "noarch")


@contextmanager
def snapshot(src_dir: Path, dbpath: PurePosixPath) -> Iterator[Path]:
    """A private root holding a copy of src_dir as its rpmdb at dbpath.

    Readers open the copy, so neither a deployment's checkout (hardlinked into
    the OSTree repository) nor the live database is ever written by a query.
    """
    with tempfile.TemporaryDirectory(prefix="lulayer-rpmdb-") as tmp:
        dest = Path(tmp) / str(dbpath).lstrip("/")
        dest.parent.mkdir(parents=True)
        shutil.copytree(src_dir, dest, symlinks=True,
                        ignore=shutil.ignore_patterns("*-shm", "*-wal", ".rpm.lock", "__db.*"))
        yield Path(tmp)


@functools.lru_cache(maxsize=32)
def commit_packages(repo: OSTree.Repo, checksum: str, dbpath: PurePosixPath) -> tuple[Package, ...]:
    """The packages of an OSTree commit, read from a private copy of its rpmdb.

    Reads the repository, not a checkout: a deployment's /usr may have a live
    overlay on it that hides what the commit itself holds. A commit never
    changes, so the answer is kept for the process.
    """
    with tempfile.TemporaryDirectory(prefix="lulayer-rpmdb-") as tmp:
        dest = Path(tmp) / str(dbpath).lstrip("/")
        dest.parent.mkdir(parents=True)
        opts = OSTree.RepoCheckoutAtOptions()
        opts.subpath = str(dbpath)
        opts.force_copy = True
        opts.mode = OSTree.RepoCheckoutMode.USER
        try:
            repo.checkout_at(opts, AT_FDCWD, str(dest), checksum, None)
        except GLib.Error as e:
            raise LulayerError(f"commit {checksum[:12]} has no rpmdb at {dbpath}: {e.message}") from e
        return read_packages(Path(tmp), dbpath)
