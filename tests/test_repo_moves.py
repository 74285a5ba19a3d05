"""Layered packages follow their repositories without surprises.

A package is layered while the repository offers upgrademe 1.0; then the repository moves
on, as Fedora's updates repository does the day after an update: it offers 2.0 beside 1.0,
or 2.0 alone. install and uninstall keep every layered package and dependency at the build
it has while it is offered, move it (and say so) when it is gone, never fail for that;
upgrade moves everything; --live applies a moved package only with --allow-replacement.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import (
    booted,
    chroot,
    commit_of,
    describe,
    fstype_at,
    lulayer,
    one_error_line,
    ostree_fsck,
    pending,
    point_repo_file,
)
from tests.invariants import live_commit

pytestmark = pytest.mark.root

UPGRADEME_1 = "upgrademe-1.0-1.fc41.x86_64"
MOVED_NOTE = "upgrademe 1.0-1.fc41 is no longer offered; moving to 2.0-1.fc41"


def repo_with_2(tmp_path: Path, *, drop_1: bool) -> Path:
    """The default repository plus upgrademe 2.0; with drop_1, without upgrademe 1.0."""
    packages = [p for p in fixture_build.default_repo_packages()
                if not (drop_1 and p.name.startswith("upgrademe-1.0-"))]
    return fixture_build.make_repo(tmp_path / ("repo-moved" if drop_1 else "repo-both"),
                                   [*packages, fixture_build.rpm_path("upgrademe", "2.0")])


def layered_nevras(sysroot: Path) -> list[str]:
    deps = json.loads(lulayer(sysroot, "status", "--json").stdout)["deployments"]
    return [str(n) for n in deps[0]["lulayer-layered-nevras"]]


def upgrademe_version(sysroot: Path) -> str:
    return chroot(pending(sysroot), "upgrademe", check=True).stdout.strip()


def test_install_moves_a_layered_package_the_repository_dropped(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "upgrademe")
    point_repo_file(booted(sysroot), repo_with_2(tmp_path, drop_1=True))

    proc = lulayer(sysroot, "install", "htop")
    assert MOVED_NOTE in proc.stdout, proc.stdout
    assert upgrademe_version(sysroot) == "upgrademe 2.0"
    assert (pending(sysroot) / "usr/bin/htop").is_file()
    assert "upgrademe-2.0-1.fc41.x86_64" in layered_nevras(sysroot)
    ostree_fsck(sysroot)


def test_uninstall_moves_a_layered_package_the_repository_dropped(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "upgrademe", "htop")
    point_repo_file(booted(sysroot), repo_with_2(tmp_path, drop_1=True))

    proc = lulayer(sysroot, "uninstall", "htop")
    assert MOVED_NOTE in proc.stdout, proc.stdout
    assert upgrademe_version(sysroot) == "upgrademe 2.0"
    assert not (pending(sysroot) / "usr/bin/htop").exists()


def test_install_keeps_a_layered_dependency_at_its_build_while_offered(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "needs-upgrademe")  # upgrademe 1.0 comes as its dependency
    assert UPGRADEME_1 in layered_nevras(sysroot)
    point_repo_file(booted(sysroot), repo_with_2(tmp_path, drop_1=False))

    proc = lulayer(sysroot, "install", "htop")
    assert "moving" not in proc.stdout, proc.stdout
    assert upgrademe_version(sysroot) == "upgrademe 1.0"
    assert UPGRADEME_1 in layered_nevras(sysroot)

    # Gone from the repository: the dependency moves, and the command says so.
    point_repo_file(booted(sysroot), repo_with_2(tmp_path, drop_1=True))
    proc = lulayer(sysroot, "uninstall", "htop")
    assert MOVED_NOTE in proc.stdout, proc.stdout
    assert upgrademe_version(sysroot) == "upgrademe 2.0"


def test_a_new_request_that_needs_a_newer_build_moves_the_layered_one(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "upgrademe")
    point_repo_file(booted(sysroot), repo_with_2(tmp_path, drop_1=False))

    proc = lulayer(sysroot, "install", "needs-new-upgrademe")
    assert "upgrademe 1.0-1.fc41 is not what the request needs; moving to 2.0-1.fc41" in proc.stdout, proc.stdout
    assert upgrademe_version(sysroot) == "upgrademe 2.0"


def test_upgrade_moves_every_layered_package(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "needs-upgrademe")
    point_repo_file(booted(sysroot), repo_with_2(tmp_path, drop_1=False))

    lulayer(sysroot, "upgrade")
    assert upgrademe_version(sysroot) == "upgrademe 2.0"


def test_live_install_refuses_a_moved_package_without_allow_replacement(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "upgrademe", "--live")
    live = booted(sysroot)
    point_repo_file(live, repo_with_2(tmp_path, drop_1=True))

    refused = lulayer(sysroot, "install", "htop", "--live", check=False)
    one_error_line(refused, "packages would be replaced", f"{UPGRADEME_1} -> upgrademe-2.0-1.fc41.x86_64",
                   "--allow-replacement")
    assert chroot(live, "upgrademe", check=True).stdout.strip() == "upgrademe 1.0"
    assert not (live / "usr/bin/htop").exists()
    # Refused means nothing changed: the next boot is what it was (rpm-ostree's --apply-live would
    # have made the deployment first). The same command with the flag does it all.
    assert upgrademe_version(sysroot) == "upgrademe 1.0"

    lulayer(sysroot, "install", "htop", "--live", "--allow-replacement")
    assert upgrademe_version(sysroot) == "upgrademe 2.0"
    assert chroot(live, "upgrademe", check=True).stdout.strip() == "upgrademe 2.0"
    assert (live / "usr/bin/htop").is_file()
    ostree_fsck(sysroot)


def test_live_install_ahead_of_its_commit_refused_is_taken_back_and_allowed_goes_live_from_the_commit(
        sysroot: Path, tmp_path: Path) -> None:
    """upgrademe 1.0 booted, nothing live: `install htop --live` puts htop live before its commit (the
    moved upgrademe's files are the booted /usr's already, left out), then the check refuses the move and
    takes it back; with --allow-replacement the layer does not match the commit (upgrademe changes), so
    the update goes live from the commit."""
    lulayer(sysroot, "install", "upgrademe")
    live = fixture_build.reboot(sysroot)
    point_repo_file(live, repo_with_2(tmp_path, drop_1=True))

    refused = lulayer(sysroot, "--debug", "install", "htop", "--live", check=False)
    assert refused.returncode == 1, describe(refused)
    for said in ("live ahead of the commit", "taking back what went live ahead of its commit",
                 "packages would be replaced"):
        assert said in refused.stderr, describe(refused)
    assert fstype_at(live / "usr") is None
    assert not (live / "usr/bin/htop").exists()
    assert chroot(live, "upgrademe", check=True).stdout.strip() == "upgrademe 1.0"
    assert upgrademe_version(sysroot) == "upgrademe 1.0"

    out = lulayer(sysroot, "--debug", "install", "htop", "--live", "--allow-replacement")
    assert "are not what it holds: it goes live from the commit" in out.stderr, describe(out)
    assert chroot(live, "upgrademe", check=True).stdout.strip() == "upgrademe 2.0"
    assert chroot(live, "htop", check=True).stdout.strip() == "htop 3.3.0"
    assert live_commit(sysroot) == commit_of(pending(sysroot))
    ostree_fsck(sysroot)


def test_live_install_with_allow_replacement_applies_the_moved_package(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "upgrademe", "--live")
    live = booted(sysroot)
    point_repo_file(live, repo_with_2(tmp_path, drop_1=True))

    proc = lulayer(sysroot, "install", "htop", "--live", "--allow-replacement")
    assert MOVED_NOTE in proc.stdout, proc.stdout
    assert chroot(live, "upgrademe", check=True).stdout.strip() == "upgrademe 2.0"
    assert (live / "usr/bin/htop").is_file()
