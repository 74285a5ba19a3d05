"""A refused live apply changes nothing (issue 19), unless --live-or-reboot asks for the next boot.

Refused: a replacement without --allow-replacement, a change to the running kernel's modules.
Checked as a user would: the exit status and its one line, nothing printed as queued, the
deployments and the staged record as they were, the live /usr as it was.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import (
    booted,
    describe,
    lulayer,
    one_error_line,
    point_repo_file,
    rpm,
    rpm_names,
    staged_record,
    wait_unlocked,
)

pytestmark = pytest.mark.root


def deployments(sysroot: Path) -> list[str]:
    return [p.name for p in fixture_build.deployments(sysroot)]


def with_cfgpkg_1_booted_and_2_offered(sysroot: Path, tmp_path: Path) -> Path:
    lulayer(sysroot, "install", "cfgpkg")
    root = fixture_build.reboot(sysroot)
    repo = fixture_build.make_repo(tmp_path / "repo2", [*fixture_build.default_repo_packages(),
                                                        fixture_build.rpm_path("cfgpkg", "2.0")])
    point_repo_file(root, repo)
    return root


def assert_nothing_changed(sysroot: Path, before: list[str], proc: subprocess.CompletedProcess[str]) -> None:
    assert deployments(sysroot) == before, "a refused live apply made a deployment"
    assert staged_record(sysroot) is None, "a refused live apply staged a deployment"
    assert "Upgraded:" not in proc.stdout and "Added:" not in proc.stdout and "queued" not in proc.stdout, \
        describe(proc)


def test_upgrade_live_without_allow_replacement_is_refused_and_changes_nothing(sysroot: Path,
                                                                               tmp_path: Path) -> None:
    root = with_cfgpkg_1_booted_and_2_offered(sysroot, tmp_path)
    before = deployments(sysroot)
    refused = lulayer(sysroot, "upgrade", "--live", check=False)
    assert refused.returncode == 1
    one_error_line(refused, "packages would be replaced: cfgpkg-1.0-1.fc41.noarch -> cfgpkg-2.0-1.fc41.noarch",
                   "--allow-replacement")
    assert_nothing_changed(sysroot, before, refused)
    assert (root / "etc/cfgpkg.conf").read_text() == "setting=1.0\n"
    # The upgrade is still there to make, live, by the same command with the flag.
    done = lulayer(sysroot, "upgrade", "--live", "--allow-replacement")
    assert "Upgraded: cfgpkg-1.0-1.fc41.noarch -> cfgpkg-2.0-1.fc41.noarch" in done.stdout, describe(done)
    assert "No upgrade available" not in done.stdout
    assert rpm(root, "-q", "cfgpkg").stdout.startswith("cfgpkg-2.0")


def test_a_change_to_the_running_kernels_modules_is_refused_and_changes_nothing(sysroot: Path) -> None:
    before = deployments(sysroot)
    refused = lulayer(sysroot, "install", "kmodpkg", "--live", "--allow-replacement", check=False)
    assert refused.returncode == 1
    one_error_line(refused, "the update changes the running kernel's /usr/lib/modules/6.1.0-1.fc41.x86_64",
                   "reboot")
    assert_nothing_changed(sysroot, before, refused)
    assert "kmodpkg" not in rpm_names(booted(sysroot))
    assert json.loads(lulayer(sysroot, "status", "--json").stdout)["deployments"][0]["requested-packages"] == []


def test_live_or_reboot_makes_the_refused_change_for_the_next_boot_and_says_so(sysroot: Path,
                                                                               tmp_path: Path) -> None:
    root = with_cfgpkg_1_booted_and_2_offered(sysroot, tmp_path)
    before = deployments(sysroot)
    done = lulayer(sysroot, "upgrade", "--live-or-reboot")
    assert "Not applied live (--live-or-reboot): packages would be replaced" in done.stdout, describe(done)
    assert "Changes queued for the next boot." in done.stdout
    assert "The next boot brings changes the running system lacks" in done.stdout
    assert "Live update applied" not in done.stdout
    assert len(deployments(sysroot)) == len(before) + 1 and staged_record(sysroot) is None
    assert (root / "usr/bin/cfgpkg").exists() and "cfgpkg" in rpm_names(root)
    assert rpm(root, "-q", "cfgpkg").stdout.startswith("cfgpkg-1.0"), "the live system is left as it was"
    after = fixture_build.reboot(sysroot)
    assert (after / "etc/cfgpkg.conf").read_text() == "setting=2.0\n"


def test_live_or_reboot_applies_live_what_can_go_live(sysroot: Path) -> None:
    out = json.loads(lulayer(sysroot, "install", "cfgpkg", "--live-or-reboot", "--json").stdout)
    wait_unlocked(sysroot)  # staged as with --live: its writer is detached
    assert out["live"]["changed"] and "live-refused" not in out and out["next-boot"] == "being-written", out
    assert (booted(sysroot) / "usr/bin/cfgpkg").exists()
    assert not out["needs-reboot"]


def test_live_or_reboot_refused_says_why_in_json(sysroot: Path, tmp_path: Path) -> None:
    with_cfgpkg_1_booted_and_2_offered(sysroot, tmp_path)
    out = json.loads(lulayer(sysroot, "upgrade", "--live-or-reboot", "--json").stdout)
    assert out["live-refused"].startswith("packages would be replaced"), out
    assert out["next-boot"] == "written" and out["needs-reboot"] and "live" not in out, out


def test_live_or_reboot_with_reboot_is_refused(sysroot: Path) -> None:
    before = deployments(sysroot)
    proc = lulayer(sysroot, "install", "cfgpkg", "--live-or-reboot", "--reboot", check=False)
    one_error_line(proc, "--reboot and --live cannot be combined")
    assert_nothing_changed(sysroot, before, proc)
