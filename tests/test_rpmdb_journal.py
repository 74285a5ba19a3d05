"""Compose from the base commit and the rpm transaction alone, whatever lies in the checkout.

A dnf-built image keeps its sqlite rpmdb in WAL mode; a reader of a deployment's rpmdb
(`rpm --root DEPLOYMENT -qa`) then leaves rpmdb.sqlite-shm and -wal in the booted checkout.
Each test makes those stray files as a user would, layers a package, and checks the new
image: its rpmdb folder holds what rpm made and nothing else, it is in rollback-journal mode
and reads on a read-only mount, and the repository is intact. Both journal modes of the base
(fixtures/build.py RpmdbJournal) and both rpmdb layouts (RpmdbLayout) are covered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.build import RpmdbJournal, RpmdbLayout
from tests.helpers import booted, describe, lulayer, next_commit, ostree_fsck, pending, run, wait_unlocked

pytestmark = pytest.mark.root

SQLITE_SIDE_FILES = ("rpmdb.sqlite-shm", "rpmdb.sqlite-wal")
CASES = [(RpmdbLayout.RPM_OSTREE, RpmdbJournal.DELETE), (RpmdbLayout.RPM_OSTREE, RpmdbJournal.WAL),
         (RpmdbLayout.SYSIMAGE, RpmdbJournal.WAL)]


def journal_mode(db: Path) -> str:
    """What the sqlite file header says (bytes 18-19: 1 rollback journal, 2 WAL), without opening it."""
    with open(db, "rb") as f:
        header = f.read(20)
    return {b"\x01\x01": "delete", b"\x02\x02": "wal"}[header[18:20]]


def rpm_qa(root: Path, dbpath: str, *, read_only: bool = False) -> set[str]:
    """rpm -qa in ROOT's rpmdb at DBPATH; with read_only on a read-only bind mount of that folder."""
    db = root / dbpath.lstrip("/")
    query = f"rpm --root {root} --dbpath {dbpath} -qa --qf '%{{NAME}}\\n'"
    cmd = ["sh", "-c", query] if not read_only else [
        "unshare", "--mount", "--propagation", "private", "sh", "-ec",
        f"mount --bind {db} {db}; mount -o remount,bind,ro {db}; {query}"]
    proc = run(cmd)
    assert proc.returncode == 0 and "error" not in proc.stderr, describe(proc)
    return set(proc.stdout.split())


@pytest.mark.parametrize(("layout", "journal"), CASES, ids=lambda c: str(c))
def test_install_ignores_stray_sqlite_files_and_leaves_a_readonly_readable_rpmdb(
        make_sysroot: Callable[..., Path], layout: RpmdbLayout, journal: RpmdbJournal) -> None:
    sysroot = make_sysroot(rpmdb=layout, journal=journal)
    live = booted(sysroot)
    db = live / layout.dbpath.lstrip("/")
    assert journal_mode(db / "rpmdb.sqlite") == str(journal)

    assert "busybox" in rpm_qa(live, layout.dbpath)  # what a user does, and what leaves the stray files
    if journal is RpmdbJournal.WAL:
        assert all((db / name).exists() for name in SQLITE_SIDE_FILES), sorted(p.name for p in db.iterdir())
    strays = sorted(p.name for p in db.iterdir())

    lulayer(sysroot, "install", "htop")
    new = pending(sysroot)
    assert new != live
    new_db = new / layout.dbpath.lstrip("/")
    assert not any((new_db / name).exists() for name in SQLITE_SIDE_FILES), sorted(p.name for p in new_db.iterdir())
    assert journal_mode(new_db / "rpmdb.sqlite") == "delete"
    assert {"htop", "ncurses-libs", "busybox"} <= rpm_qa(new, layout.dbpath, read_only=True)
    # The booted checkout is as the reader left it: compose wrote nothing there.
    assert sorted(p.name for p in db.iterdir()) == strays
    ostree_fsck(sysroot)


def test_live_install_on_a_wal_base_with_stray_files(make_sysroot: Callable[..., Path]) -> None:
    sysroot = make_sysroot(journal=RpmdbJournal.WAL)
    live = booted(sysroot)
    rpm_qa(live, RpmdbLayout.RPM_OSTREE.dbpath)

    lulayer(sysroot, "install", "htop", "--live")
    wait_unlocked(sysroot)
    assert (live / "usr/bin/htop").is_file()
    assert "htop" in rpm_qa(live, RpmdbLayout.RPM_OSTREE.dbpath)
    nxt = pending(sysroot)
    assert nxt.name.startswith(next_commit(sysroot))
    assert journal_mode(nxt / "usr/share/rpm/rpmdb.sqlite") == "delete"
    ostree_fsck(sysroot)
