"""`lulayer status` text, from Status values alone (no root, no sysroot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lulayer import cli
from lulayer.layering.staged import StagedDeployment
from lulayer.layering.status import DeploymentStatus, LiveStatus, StagedStatus, Status
from lulayer.rpmdb.model import Package, PackageChanges
from lulayer.sysroot import Deployment, Origin

BASE = "b" * 64
LAYERED = "c" * 64
HTOP = Package("htop", 0, "3.3", "1", "x86_64")
NCURSES = Package("ncurses-libs", 0, "6.4", "1", "x86_64")


def deployment(checksum: str, index: int, *, booted: bool, requested: tuple[str, ...] = ()) -> Deployment:
    return Deployment(osname="fedora", checksum=checksum, serial=0, index=index,
                      path=Path(f"/sysroot/ostree/deploy/fedora/deploy/{checksum}.0"),
                      origin=Origin("fedora/41", requested), booted=booted, staged=False)


def shown(st: Status, capsys: pytest.CaptureFixture[str], verbose: bool = False) -> list[str]:
    cli._print_status(st, verbose)
    return capsys.readouterr().out.splitlines()


def test_pending_layered_deployment_is_listed_first_with_its_base_and_packages(
        capsys: pytest.CaptureFixture[str]) -> None:
    pending = DeploymentStatus(deployment(LAYERED, 0, booted=False, requested=("htop",)), BASE, "41.1",
                               (HTOP, NCURSES), pending=True, rollback=False)
    booted = DeploymentStatus(deployment(BASE, 1, booted=True), BASE, "41.1", (), pending=False, rollback=False)
    lines = shown(Status((pending, booted), PackageChanges(added=(HTOP, NCURSES))), capsys, verbose=True)
    assert lines[0] == "Deployments:"
    assert lines[1] == "  fedora:fedora/41 (pending)"
    assert f"         BaseCommit: {BASE}" in lines
    assert f"             Commit: {LAYERED}" in lines
    assert "    LayeredPackages: htop" in lines
    assert "           Packages: htop-3.3-1.x86_64 ncurses-libs-6.4-1.x86_64" in lines
    assert "● fedora:fedora/41 (booted)" in lines
    assert lines[-3:] == ["Pending diff: 2 added", "  + htop-3.3-1.x86_64", "  + ncurses-libs-6.4-1.x86_64"]


def test_live_state_is_shown_under_the_booted_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    booted = DeploymentStatus(deployment(BASE, 0, booted=True), BASE, None, (), pending=False, rollback=False)
    live = LiveStatus(commit=LAYERED, inprogress=LAYERED, replaced=True, diff=PackageChanges(added=(HTOP,)))
    lines = shown(Status((booted,), None, live), capsys)
    at = lines.index("● fedora:fedora/41 (booted)")
    assert lines[at + 2:at + 7] == [
        f"InterruptedLiveCommit: {LAYERED}",
        "                     run `lulayer apply-live` to finish it or `lulayer apply-live --reset`",
        f"         LiveCommit: {LAYERED}",
        "           LiveDiff: 1 added",
        "       LiveReplaced: files were replaced or removed live",
    ]


def test_a_staged_deployment_comes_first_and_says_how_it_gets_written(capsys: pytest.CaptureFixture[str]) -> None:
    booted = DeploymentStatus(deployment(BASE, 0, booted=True), BASE, None, (), pending=False, rollback=False)
    record = StagedDeployment(LAYERED, "[origin]\nbaserefspec=fedora:fedora/41\n", f"{BASE}.0", ("htop",))
    for writing, failed, says in ((True, None, "being written"),
                                  (False, "no space", "write failed: no space"),
                                  (False, None, "not written yet; `lulayer finalize` or a reboot writes it")):
        staged = StagedStatus(StagedDeployment(record.commit, record.origin, record.merge, record.requested, failed),
                              "fedora", "fedora/41", BASE, (HTOP,), being_written=writing)
        lines = shown(Status((booted,), PackageChanges(added=(HTOP,)), staged=staged), capsys)
        assert lines[1] == f"  fedora:fedora/41 (pending, staged: {says})"
        assert lines[lines.index("● fedora:fedora/41 (booted)") - 1] == ""
