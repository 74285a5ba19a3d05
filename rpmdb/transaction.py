"""A real rpm transaction into a tree, with python3-rpm.

Scriptlets run chrooted in the tree (rpm does that for a non-/ root). A
scriptlet that fails fails the transaction, as in rpm-ostree: a half-run %post
in an image is worse than no image.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import rpm

from lulayer.errors import ComposeError
from lulayer.rpmdb.db import dbpath_macro


class UnmetDependencies(ComposeError):
    """rpm's dependency check of a transaction failed; problems says who needs what."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("rpm found unmet dependencies: " + "; ".join(problems))
        self.problems = tuple(problems)

    def __reduce__(self) -> tuple[type[UnmetDependencies], tuple[tuple[str, ...]]]:  # type: ignore[override]
        return type(self), (self.problems,)


def install_rpms(root: Path, dbpath: PurePosixPath, rpm_paths: Sequence[Path], *, erase: Sequence[str] = (),
                 justdb: bool = False) -> None:
    """Install rpm_paths into root, whose rpmdb is at dbpath, and erase the installed packages named
    in erase, in one transaction. An RPM of a package root has replaces it, older or newer (a base
    override). With justdb only the rpmdb changes: no file, no scriptlet."""
    with dbpath_macro(dbpath):
        ts = rpm.TransactionSet(str(root))
        # Digests and signatures were checked against the repository before we got here.
        ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
        # A replacement may be older than the base's package (rpm-ostree enables OLDPACKAGE too,
        # src/libpriv/rpmostree-core.cxx write_rpmdb); layering never reaches the base's (resolver.check_transaction).
        ts.setProbFilter(rpm.RPMPROB_FILTER_OLDPACKAGE)
        if justdb:
            ts.setFlags(rpm.RPMTRANS_FLAG_JUSTDB | rpm.RPMTRANS_FLAG_NOSCRIPTS | rpm.RPMTRANS_FLAG_NOTRIGGERS)
        fds: dict[str, int] = {}
        try:
            for name in erase:
                ts.addErase(name)
            for path in rpm_paths:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                fds[str(path)] = fd
                try:
                    hdr = ts.hdrFromFdno(fd)
                except rpm.error as e:
                    raise ComposeError(f"{path.name} is not a readable RPM: {e}") from e
                os.lseek(fd, 0, os.SEEK_SET)
                ts.addInstall(hdr, str(path), "u")
            unresolved = ts.check()
            if unresolved:
                raise UnmetDependencies([_dep_problem(p) for p in unresolved])
            ts.order()
            script_errors: list[str] = []
            unpack_errors: list[str] = []

            def callback(what: int, amount: int, total: int, key: object, _data: object) -> int | None:
                # Every fd was opened before rpm chroots into the tree.
                if what == rpm.RPMCALLBACK_INST_OPEN_FILE:
                    fd = fds[str(key)]
                    os.lseek(fd, 0, os.SEEK_SET)
                    return fd
                if what == rpm.RPMCALLBACK_SCRIPT_ERROR:
                    script_errors.append(f"{key}: scriptlet failed (exit {total})")
                if what in (rpm.RPMCALLBACK_UNPACK_ERROR, rpm.RPMCALLBACK_CPIO_ERROR):
                    # rpm goes on without the package and ts.run() reports no problem.
                    unpack_errors.append(Path(str(key)).name)
                return None

            with tempfile.TemporaryFile(mode="w+") as log:
                rpm.setLogFile(log)
                try:
                    problems = ts.run(callback, None)
                finally:
                    rpm.setLogFile(sys.stderr)
                log.seek(0)
                rpm_says = [ln.strip().removeprefix("error: ") for ln in log if ln.startswith("error:")]
            if unpack_errors:
                why = next((ln for ln in rpm_says if "unpacking" in ln), "")
                raise ComposeError(f"rpm could not unpack {', '.join(unpack_errors)}" + (f": {why}" if why else ""),
                                   hint="the package's payload cannot be installed on this system")
            if problems:
                space = all(_problem_type(p) in (rpm.RPMPROB_DISKSPACE, rpm.RPMPROB_DISKNODES) for p in problems)
                raise ComposeError("rpm transaction failed: " + "; ".join(_run_problem(p) for p in problems),
                                   hint="free space on the file system of the OSTree repository" if space else
                                   "a package conflicts with a file of the base image or another package")
            if script_errors:
                raise ComposeError("; ".join(script_errors), hint="the package's scriptlet must succeed in the image")
        finally:
            ts.closeDB()
            for fd in fds.values():
                os.close(fd)


def _run_problem(p: Any) -> str:
    # ts.run() gives (message, (type, key, number)) tuples: the message is what rpm says.
    if isinstance(p, tuple) and p and isinstance(p[0], str):
        return p[0]
    return str(p)


def _problem_type(p: Any) -> int | None:
    try:
        return int(p[1][0])
    except (TypeError, ValueError, IndexError):
        return None


def _dep_problem(p: Any) -> str:
    # ts.check() gives ((name, ver, rel), (needname, needver), flags, suggest, sense)
    try:
        (name, ver, rel), (need, needver), *_ = p
        return f"{name}-{ver}-{rel} needs {need} {needver}".strip()
    except (TypeError, ValueError):
        return str(p)


def make_readonly_safe(root: Path, dbpath: PurePosixPath) -> None:
    """Leave an sqlite rpmdb in rollback-journal mode, as rpm-ostree does (rust/src/normalization.rs
    normalize_rpmdb: `journal_mode=DELETE` when an rpmdb.sqlite-shm is there, rpm issue 2219).

    rpm writes in WAL mode, and a WAL database cannot be opened at all on a
    read-only file system, which is what /usr is on an OSTree system. Switching
    checkpoints the log into the database and removes the -wal and -shm files.
    """
    db = root / str(dbpath).lstrip("/") / "rpmdb.sqlite"
    if not db.exists():
        return
    conn = sqlite3.connect(db)
    try:
        mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
    finally:
        conn.close()
    if mode != "delete":
        raise ComposeError(f"cannot switch {db} out of WAL mode (journal_mode is {mode})")
