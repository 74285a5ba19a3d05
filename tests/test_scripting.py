"""The flags scripts and tools pass, as rpm-ostree defines them, and `--json` on the changing commands.

rpm-ostree's sources (coreos/rpm-ostree): src/app/rpmostree-builtin-types.h (exit 77:
RPM_OSTREE_EXIT_UNCHANGED, RPM_OSTREE_EXIT_PENDING); src/app/rpmostree-pkg-builtins.cxx
(install/uninstall: -r/--reboot, -y/--assumeyes, --allow-inactive, --idempotent,
--unchanged-exit-77, uninstall refuses no names without --all); src/app/rpmostree-clientlib.cxx
(exit 77 when no new default deployment); src/app/rpmostree-builtin-upgrade.cxx (--check and
--preview imply --unchanged-exit-77); src/daemon/rpmostreed-transaction-types.cxx
(--allow-inactive: "is already provided by", --apply-live with --reboot refused).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import (
    booted,
    commit_of,
    describe,
    lulayer,
    one_error_line,
    origin_of,
    pending,
    point_repo_file,
    rpm_names,
    tree_snapshot,
)

pytestmark = pytest.mark.root
UNTRACKED = ("deploy/fedora/var/cache", "repo/tmp")  # the resolver's cache, ostree's scratch


def ostree_state(sysroot: Path) -> dict[str, tuple[object, ...]]:
    return tree_snapshot(sysroot / "ostree", UNTRACKED)


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """stdout parses as one JSON object (nothing else is printed there)."""
    out = json.loads(proc.stdout)
    assert isinstance(out, dict), describe(proc)
    return out


def repo_with_upgrade(tmp_path: Path) -> Path:
    return fixture_build.make_repo(
        tmp_path / "repo", [*fixture_build.default_repo_packages(), fixture_build.rpm_path("upgrademe", "2.0")])


# --------------------------------------------------------------------------- exit 77


def test_unchanged_exit_77_when_nothing_changed(sysroot: Path) -> None:
    assert lulayer(sysroot, "install", "htop", "--unchanged-exit-77", "-y").returncode == 0
    before = ostree_state(sysroot)
    again = lulayer(sysroot, "install", "htop", "--idempotent", "--unchanged-exit-77", check=False)
    assert again.returncode == 77, describe(again)
    gone = lulayer(sysroot, "uninstall", "postscript", "--idempotent", "--unchanged-exit-77", check=False)
    assert gone.returncode == 77, describe(gone)
    assert lulayer(sysroot, "uninstall", "postscript", "--idempotent").returncode == 0
    assert lulayer(sysroot, "upgrade", "--unchanged-exit-77", check=False).returncode == 77
    assert ostree_state(sysroot) == before


def test_upgrade_check_and_preview_exit_77_without_an_upgrade(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "upgrademe")
    before = ostree_state(sysroot)
    check = lulayer(sysroot, "upgrade", "--check", check=False)
    assert check.returncode == 77 and "No upgrade available." in check.stdout, describe(check)
    assert lulayer(sysroot, "upgrade", "--preview", check=False).returncode == 77

    assert ostree_state(sysroot) == before
    point_repo_file(booted(sysroot), repo_with_upgrade(tmp_path))
    before = ostree_state(sysroot)
    check = lulayer(sysroot, "upgrade", "--check")
    assert "Upgrade available." in check.stdout, describe(check)
    preview = lulayer(sysroot, "upgrade", "--preview")
    assert "Upgraded: upgrademe-1.0-1.fc41.x86_64 -> upgrademe-2.0-1.fc41.x86_64" in preview.stdout, describe(preview)
    assert ostree_state(sysroot) == before, "--check and --preview change nothing"


def test_status_pending_exit_77(sysroot: Path) -> None:
    assert lulayer(sysroot, "status", "--pending-exit-77").returncode == 0
    lulayer(sysroot, "install", "htop")
    assert lulayer(sysroot, "status", "--pending-exit-77", check=False).returncode == 77
    assert lulayer(sysroot, "status", "--json", "--pending-exit-77", check=False).returncode == 77


# --------------------------------------------------------------------------- refusals


def test_uninstall_without_names_is_refused_unless_all(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    before = ostree_state(sysroot)
    for args in (("uninstall",), ("uninstall", "--dry-run"), ("uninstall", "--idempotent", "--live")):
        line = one_error_line(lulayer(sysroot, *args, check=False))
        assert "no package named" in line and "--all" in line, line
    assert ostree_state(sysroot) == before
    assert lulayer(sysroot, "uninstall", "--all").returncode == 0
    assert "requested" not in origin_of(pending(sysroot))


def test_uninstall_idempotent_skips_what_is_not_layered(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop", "postscript")
    lulayer(sysroot, "uninstall", "--idempotent", "htop", "not-layered", "busybox")
    assert "requested=postscript;" in origin_of(pending(sysroot))
    line = one_error_line(lulayer(sysroot, "uninstall", "not-layered", check=False))
    assert "not-layered is not layered" in line


def test_reboot_is_refused_on_a_folder_sysroot_and_with_live(sysroot: Path) -> None:
    before = ostree_state(sysroot)
    line = one_error_line(lulayer(sysroot, "install", "-r", "htop", check=False))
    assert "folder sysroot" in line, line
    line = one_error_line(lulayer(sysroot, "install", "--reboot", "--live", "htop", check=False))
    assert "--live" in line, line
    one_error_line(lulayer(sysroot, "upgrade", "--reboot", "--check", check=False))
    assert ostree_state(sysroot) == before


# --------------------------------------------------------------------------- --allow-inactive


def test_a_package_the_base_has_needs_allow_inactive_and_is_then_recorded(sysroot: Path) -> None:
    before = ostree_state(sysroot)
    line = one_error_line(lulayer(sysroot, "install", "busybox", check=False))
    assert '"busybox" is already provided by: busybox-' in line and "--allow-inactive" in line, line
    one_error_line(lulayer(sysroot, "install", "/usr/bin/busybox", check=False))  # a file the base owns
    assert ostree_state(sysroot) == before

    out = as_json(lulayer(sysroot, "install", "--allow-inactive", "busybox", "--json"))
    assert out["changed"] is True and out["inactive-requests"] == ["busybox"]
    assert out["changes"] == {"added": [], "removed": [], "upgraded": []}
    nxt = pending(sysroot)
    assert commit_of(nxt) == commit_of(booted(sysroot)), "nothing to layer: the base commit, new origin"
    assert "requested=busybox;" in origin_of(nxt)

    # Layering something else keeps the inactive request; removing it needs no recompose.
    lulayer(sysroot, "install", "htop")
    assert "requested=busybox;htop;" in origin_of(pending(sysroot))
    with_htop = commit_of(pending(sysroot))
    lulayer(sysroot, "uninstall", "busybox")
    assert commit_of(pending(sysroot)) == with_htop and "requested=htop;" in origin_of(pending(sysroot))
    assert {"htop", "busybox"} <= rpm_names(pending(sysroot))


# --------------------------------------------------------------------------- --json


def test_install_json_is_the_text_output_as_data(sysroot: Path) -> None:
    text = lulayer(sysroot, "install", "--dry-run", "htop").stdout
    dry = as_json(lulayer(sysroot, "install", "--dry-run", "--json", "htop"))
    assert dry["dry-run"] is True and dry["changed"] is True and dry["needs-reboot"] is True
    assert dry["next-boot"] == "unchanged" and "deployment" not in dry
    added = dry["changes"]["added"]  # type: ignore[index]
    assert added == ["htop-3.3.0-1.fc41.x86_64", "ncurses-libs-6.4-1.fc41.x86_64"]
    assert [f"  Added: {p}" for p in added] == [ln for ln in text.splitlines() if ln.startswith("  Added:")]
    assert len(fixture_build.deployments(sysroot)) == 1

    done = as_json(lulayer(sysroot, "install", "--json", "htop"))
    assert done["changed"] is True and done["dry-run"] is False and done["needs-reboot"] is True
    assert done["changes"] == dry["changes"] and done["next-boot"] == "written"
    assert done["requested-packages"] == ["htop"] and done["previous-requested-packages"] == []
    deployment = done["deployment"]
    assert isinstance(deployment, dict) and deployment["checksum"] == commit_of(pending(sysroot)) == done["commit"]

    again = as_json(lulayer(sysroot, "install", "--json", "--idempotent", "htop"))
    assert again["changed"] is False and again["needs-reboot"] is True  # still pending (community.general#10009)
    assert again["message"] == "already requested: htop; nothing to do"


def test_live_json_for_install_uninstall_and_apply_live(sysroot: Path) -> None:
    live_root = booted(sysroot)
    out = as_json(lulayer(sysroot, "install", "--live", "--json", "htop"))
    assert out["needs-reboot"] is False and out["next-boot"] in ("being-written", "written")
    live = out["live"]
    assert isinstance(live, dict) and live["changed"] is True and live["target"] == out["commit"]
    assert live["changes"]["added"] == out["changes"]["added"]  # type: ignore[index]
    assert (live_root / "usr/bin/htop").exists()

    out = as_json(lulayer(sysroot, "uninstall", "--live", "--json", "htop"))
    assert out["changed"] is True and out["needs-reboot"] is False
    assert out["live"]["changes"]["removed"] == ["htop-3.3.0-1.fc41.x86_64",  # type: ignore[index]
                                                 "ncurses-libs-6.4-1.fc41.x86_64"]
    assert not (live_root / "usr/bin/htop").exists()

    lulayer(sysroot, "install", "hello-config")
    applied = as_json(lulayer(sysroot, "apply-live", "--json"))
    assert applied["changed"] is True and applied["needs-reboot"] is False
    assert applied["live"]["target"] == commit_of(pending(sysroot))  # type: ignore[index]
    reset = as_json(lulayer(sysroot, "apply-live", "--reset", "--json"))
    assert reset["changed"] is True and reset["needs-reboot"] is True
    assert reset["live"]["target"] == commit_of(live_root)  # type: ignore[index]


def test_upgrade_json_and_install_latest_keep_the_base(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "upgrademe", "htop")
    layered = commit_of(pending(sysroot))
    point_repo_file(booted(sysroot), repo_with_upgrade(tmp_path))
    dry = as_json(lulayer(sysroot, "upgrade", "--dry-run", "--json"))
    assert dry["changes"]["upgraded"] == [["upgrademe-1.0-1.fc41.x86_64",  # type: ignore[index]
                                           "upgrademe-2.0-1.fc41.x86_64"]]
    assert commit_of(pending(sysroot)) == layered

    out = as_json(lulayer(sysroot, "install", "--latest", "--json", "upgrademe"))
    assert out["changed"] is True and out["changes"] == dry["changes"]
    status = json.loads(lulayer(sysroot, "status", "--json").stdout)["deployments"]
    assert status[0]["base-checksum"] == commit_of(booted(sysroot)), "no OS update as a side effect"
    assert "upgrademe-2.0-1.fc41.x86_64" in status[0]["lulayer-layered-nevras"]
    again = as_json(lulayer(sysroot, "install", "--latest", "--json", "upgrademe"))
    assert again["changed"] is False and "already at the newest" in str(again["message"])
