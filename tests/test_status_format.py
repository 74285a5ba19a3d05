"""`lulayer status` text, from Status values alone (no root, no sysroot).

The layout follows rpm-ostree's (coreos/rpm-ostree src/app/rpmostree-builtin-status.cxx
print_one_deployment): the first line of a deployment is the origin's refspec or image
reference itself, with the image's digest under it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lulayer import cli
from lulayer.layering.staged import StagedDeployment
from lulayer.layering.status import DeploymentStatus, LiveStatus, StagedStatus, Status
from lulayer.rpmdb.model import Package, PackageChanges
from lulayer.sysroot import Deployment, Origin, RefspecKind

BASE = "b" * 64
LAYERED = "c" * 64
HTOP = Package("htop", 0, "3.3", "1", "x86_64")
NCURSES = Package("ncurses-libs", 0, "6.4", "1", "x86_64")


IMAGE = "ostree-remote-registry:fedora:quay.io/fedora/fedora-coreos:stable"
DIGEST = "sha256:" + "d" * 64


def deployment(checksum: str, index: int, *, booted: bool, requested: tuple[str, ...] = (),
               origin: Origin | None = None) -> Deployment:
    return Deployment(osname="fedora", checksum=checksum, serial=0, index=index,
                      path=Path(f"/sysroot/ostree/deploy/fedora/deploy/{checksum}.0"),
                      origin=origin or Origin("fedora/41", requested), booted=booted, staged=False)


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
    assert lines[1] == "  fedora/41 (pending)"
    assert f"         BaseCommit: {BASE}" in lines
    assert f"             Commit: {LAYERED}" in lines
    assert "    LayeredPackages: htop" in lines
    assert "           Packages: htop-3.3-1.x86_64 ncurses-libs-6.4-1.x86_64" in lines
    assert "● fedora/41 (booted)" in lines
    assert "          StateRoot: fedora" in lines
    assert lines[-3:] == ["Pending diff: 2 added", "  + htop-3.3-1.x86_64", "  + ncurses-libs-6.4-1.x86_64"]


def test_live_state_is_shown_under_the_booted_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    booted = DeploymentStatus(deployment(BASE, 0, booted=True), BASE, None, (), pending=False, rollback=False)
    live = LiveStatus(commit=LAYERED, inprogress=LAYERED, replaced=True, diff=PackageChanges(added=(HTOP,)))
    lines = shown(Status((booted,), None, live), capsys)
    at = lines.index("● fedora/41 (booted)")
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
        assert lines[1] == f"  fedora/41 (pending, staged: {says})"
        assert lines[lines.index("● fedora/41 (booted)") - 1] == ""


def test_a_container_deployment_shows_its_image_reference_and_digest(capsys: pytest.CaptureFixture[str]) -> None:
    image = Origin(IMAGE, ("htop",), kind=RefspecKind.CONTAINER)
    pending = DeploymentStatus(deployment(LAYERED, 0, booted=False, origin=image), BASE, "41.20261201.0", (HTOP,),
                               pending=True, rollback=False, image_digest=DIGEST)
    booted = DeploymentStatus(deployment(BASE, 1, booted=True, origin=Origin(IMAGE, kind=RefspecKind.CONTAINER)),
                              BASE, "41.20261201.0", (), pending=False, rollback=False, image_digest=DIGEST)
    lines = shown(Status((pending, booted), PackageChanges(added=(HTOP,))), capsys)
    assert lines[1:4] == [f"  {IMAGE} (pending)", f"             Digest: {DIGEST}",
                          "            Version: 41.20261201.0"]
    at = lines.index(f"● {IMAGE} (booted)")
    assert lines[at + 1] == f"             Digest: {DIGEST}"
    # rpm-ostree's JSON keys for it (src/daemon/rpmostreed-deployment-utils.cxx)
    assert pending.to_json()["container-image-reference"] == IMAGE
    assert pending.to_json()["container-image-reference-digest"] == DIGEST


def test_a_container_deployment_without_a_digest_shows_no_digest(capsys: pytest.CaptureFixture[str]) -> None:
    booted = DeploymentStatus(deployment(BASE, 0, booted=True, origin=Origin(IMAGE, kind=RefspecKind.CONTAINER)),
                              BASE, None, (), pending=False, rollback=False)
    lines = shown(Status((booted,), None), capsys)
    assert lines[1:3] == [f"● {IMAGE} (booted)", f"             Commit: {BASE}"]
    assert "container-image-reference-digest" not in booted.to_json()
    assert "container-image-reference" not in DeploymentStatus(
        deployment(BASE, 0, booted=True), BASE, None, (), pending=False, rollback=False).to_json()


def test_a_staged_container_deployment_shows_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    booted = DeploymentStatus(deployment(BASE, 0, booted=True, origin=Origin(IMAGE, kind=RefspecKind.CONTAINER)),
                              BASE, None, (), pending=False, rollback=False, image_digest=DIGEST)
    record = StagedDeployment(LAYERED, f"[origin]\ncontainer-image-reference={IMAGE}\n", f"{BASE}.0", ("htop",))
    staged = StagedStatus(record, "fedora", IMAGE, BASE, (HTOP,), being_written=True, image_digest=DIGEST)
    lines = shown(Status((booted,), PackageChanges(added=(HTOP,)), staged=staged), capsys)
    assert lines[1:3] == [f"  {IMAGE} (pending, staged: being written)", f"             Digest: {DIGEST}"]
