"""What a sysroot must show after any command, whether it finished, was killed or was refused.

Shared by the kill, disk-full, concurrency, soak, hostile-input and signature tests: the live
state lulayer recorded, the live /usr against the commit it claims, the next boot's deployment
against its commit, and what a refused command must have left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fixtures import build as fixture_build
from tests.helpers import (
    DBPATH,
    RPMDB_RUNTIME_FILES,
    booted,
    checkout_subpath,
    commit_of,
    fstype_at,
    leftover_temp_paths,
    ostree_fsck,
    pending,
    repo_of,
    rpm_names,
    run,
    tree_diff,
    tree_entries,
)

STATE_FILE = "lulayer-live.json"


def live_state(sysroot: Path) -> dict[str, object] | None:
    """The booted deployment's live state file, or None when there is none. lulayer writes it
    beside and renames it over, so a reader never sees half of it: anything but JSON fails."""
    f = sysroot / "run/ostree/deployment-state" / booted(sysroot).name / STATE_FILE
    try:
        text = f.read_text()
    except FileNotFoundError:
        return None
    data = json.loads(text)
    assert isinstance(data, dict), f"{f}: {text!r}"
    return data


def live_in_progress(sysroot: Path) -> bool:
    """A live update has begun and not finished (the state file says so)."""
    st = live_state(sysroot)
    return bool(st and st.get("inprogress"))


def live_commit(sysroot: Path) -> str:
    """What the live /usr holds according to the state file (the booted commit without one)."""
    st = live_state(sysroot)
    return str(st["commit"]) if st and st.get("commit") else commit_of(booted(sysroot))


def requested(deployment: Path) -> set[str]:
    """The packages the deployment's .origin requests."""
    origin = Path(f"{deployment}.origin").read_text()
    for line in origin.splitlines():
        if line.startswith("requested="):
            return {p for p in line.split("=", 1)[1].split(";") if p}
    return set()


def backing_dir(sysroot: Path) -> Path:
    """The folder of the live overlay's upper and work layers."""
    b = booted(sysroot)
    return sysroot / "ostree/deploy" / fixture_build.OSNAME / "backing" / b.name / "lulayer-live"


def objects_count(sysroot: Path) -> int:
    return sum(len(files) for _d, _s, files in os.walk(repo_of(sysroot) / "objects"))


def usr_entries(root: Path) -> dict[str, object]:
    return dict(tree_entries(root, ignore_names=RPMDB_RUNTIME_FILES))


def is_read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def commit_rpm_names(sysroot: Path, commit: str, scratch: Path) -> set[str]:
    """The package names in COMMIT's rpmdb, read by rpm from a copy (never the repository's
    hardlinked objects)."""
    dest = checkout_subpath(sysroot, commit, DBPATH, scratch / f"rpmdb-{commit[:12]}")
    root = scratch / f"rpmroot-{commit[:12]}"
    shutil.copytree(dest, root / DBPATH.lstrip("/"))
    try:
        return rpm_names(root)
    finally:
        fixture_build.remove_sysroot(dest)
        fixture_build.remove_sysroot(root)


def assert_live_is(sysroot: Path, commit: str, scratch: Path, packages: set[str]) -> None:
    """The live /usr is COMMIT's, nothing is in progress, nothing is left over, the rpmdb lists
    exactly PACKAGES, the repository is sound."""
    live = booted(sysroot)
    st = live_state(sysroot)
    assert not (st and st.get("inprogress")), st
    assert live_commit(sysroot) == commit
    expected = usr_entries(checkout_subpath(sysroot, commit, "/usr", scratch))
    diff = tree_diff(expected, usr_entries(live / "usr"))
    assert not diff, "\n".join(diff[:30])
    assert leftover_temp_paths(live / "usr") == []
    assert rpm_names(live) == packages
    ostree_fsck(sysroot)


@dataclass
class Checker:
    """Asserts the whole invariant set of a sysroot against the commits it should show
    (commits' trees and package lists are read once and kept)."""

    sysroot: Path
    scratch: Path
    _usr: dict[str, dict[str, object]] = field(default_factory=dict)
    _pkgs: dict[str, frozenset[str]] = field(default_factory=dict)

    def commit_usr(self, commit: str) -> dict[str, object]:
        if commit not in self._usr:
            dest = checkout_subpath(self.sysroot, commit, "/usr", self.scratch / f"usr-{len(self._usr)}")
            self._usr[commit] = usr_entries(dest)
            fixture_build.remove_sysroot(dest)
        return self._usr[commit]

    def packages_of(self, commit: str) -> frozenset[str]:
        if commit not in self._pkgs:
            self._pkgs[commit] = frozenset(commit_rpm_names(self.sysroot, commit, self.scratch))
        return self._pkgs[commit]

    def check(self, expect_live: str, context: str = "") -> None:
        sysroot = self.sysroot
        live = booted(sysroot)
        # The live /usr is exactly the expected commit's, and nothing is in progress.
        st = live_state(sysroot)
        assert not (st and st.get("inprogress")), f"{context}: still in progress: {st}"
        assert live_commit(sysroot) == expect_live, f"{context}: state says {live_commit(sysroot)}"
        diff = tree_diff(self.commit_usr(expect_live), usr_entries(live / "usr"))
        assert not diff, f"{context}: live /usr is not {expect_live[:12]}:\n" + "\n".join(diff[:30])
        # Between applies the overlay is read-only; no .new folder or temp file is left.
        if fstype_at(live / "usr") == "overlay":
            assert is_read_only(live / "usr"), f"{context}: the live /usr is left writable"
        leftovers = leftover_temp_paths(live / "usr")
        assert not leftovers, f"{context}: leftovers {leftovers}"
        # The rpmdb opens and lists exactly the packages of the files.
        assert rpm_names(live) == self.packages_of(expect_live), context
        # The next boot's deployment is complete: its /usr is its commit's, its rpmdb and
        # its origin agree with it.
        nxt = pending(sysroot)
        ncommit = commit_of(nxt)
        diff = tree_diff(self.commit_usr(ncommit), usr_entries(nxt / "usr"))
        assert not diff, f"{context}: next boot's /usr is not its commit:\n" + "\n".join(diff[:30])
        pkgs = self.packages_of(ncommit)
        assert rpm_names(nxt) == pkgs, context
        assert requested(nxt) <= pkgs and ("htop" in pkgs) <= ("htop" in requested(nxt)), \
            f"{context}: origin {requested(nxt)}, packages {sorted(pkgs)}"
        assert (nxt / "etc").is_dir(), context
        ostree_fsck(sysroot)


@dataclass(frozen=True)
class Untouched:
    """What a refused command must leave as it was: deployments, objects, refs, /etc of the host."""

    deployments: tuple[tuple[str, bytes], ...]
    objects: int
    refs: str
    host_etc: frozenset[str]

    @classmethod
    def of(cls, sysroot: Path) -> Untouched:
        refs = run(["ostree", f"--repo={repo_of(sysroot)}", "refs"], check=True).stdout
        deploy = sysroot / "ostree/deploy" / fixture_build.OSNAME / "deploy"
        # The deployment folders and their .origin files as bytes (libostree may not load them).
        listing = tuple(sorted((p.name, p.read_bytes() if p.is_file() else b"") for p in deploy.iterdir()))
        return cls(listing, objects_count(sysroot), refs, frozenset(os.listdir("/etc")))
