"""Live-only installs (`install --live --transient`), end to end on fixture sysroots.

rpm-ostree has none (its issues 3993 and 4778 ask for them; dnf5's --transient and bootc's
usr-overlay do it by hand, with nothing recorded): the live /usr gets the package, the next boot
stays as it was (no deployment, the origin untouched), and a reboot or `apply-live --reset` drops
it. The live state records the packages, so later --live commands keep them and status names them.
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
    lulayer,
    one_error_line,
    origin_of,
    pending,
    rpm_names,
    staged_record,
)
from tests.test_errors import State
from tests.test_status_json import check_status

pytestmark = pytest.mark.root


def booted_json(sysroot: Path) -> dict[str, object]:
    deps = check_status(json.loads(lulayer(sysroot, "status", "--json").stdout))
    return next(d for d in deps if d["booted"])


def test_transient_install_is_live_now_and_gone_after_a_reboot(sysroot: Path) -> None:
    base = booted(sysroot)
    deployments = fixture_build.deployments(sysroot)
    origin = origin_of(base)

    out = lulayer(sysroot, "install", "--live", "--transient", "htop").stdout

    assert "Live added: htop-3.3.0-1.fc41.x86_64" in out and "running system only" in out
    assert chroot(base, "htop", "--version", check=True).stdout.startswith("htop 3.3.0")
    assert "htop" in rpm_names(base)
    # The next boot is unchanged: no deployment, nothing staged, the origin as it was.
    assert fixture_build.deployments(sysroot) == deployments and staged_record(sysroot) is None
    assert origin_of(base) == origin
    text = lulayer(sysroot, "status").stdout
    assert "TransientPackages: htop" in text and "LayeredPackages" not in text
    d = booted_json(sysroot)
    assert d["lulayer-transient-packages"] == ["htop"] and d["requested-packages"] == []
    assert "live-replaced" in d
    assert lulayer(sysroot, "status", "--pending-exit-77", check=False).returncode == 0

    fixture_build.reboot(sysroot)

    assert booted(sysroot) == base and "htop" not in rpm_names(base)
    assert chroot(base, "htop", "--version").returncode != 0
    assert "TransientPackages" not in lulayer(sysroot, "status").stdout


def test_transient_needs_live_and_is_refused_without_it(sysroot: Path) -> None:
    state = State(sysroot)

    for args in (("--transient",), ("--transient", "--dry-run", "--live")):
        proc = lulayer(sysroot, "install", *args, "htop", check=False)
        one_error_line(proc, "--transient")
    state.assert_unchanged()


def test_transient_package_goes_with_uninstall_live(sysroot: Path) -> None:
    base = booted(sysroot)
    lulayer(sysroot, "install", "--live", "--transient", "htop")
    deployments = fixture_build.deployments(sysroot)

    out = lulayer(sysroot, "uninstall", "--live", "htop").stdout

    assert "Live removed: htop-3.3.0-1.fc41.x86_64" in out
    assert "htop" not in rpm_names(base) and chroot(base, "htop", "--version").returncode != 0
    assert fixture_build.deployments(sysroot) == deployments and staged_record(sysroot) is None
    assert "lulayer-transient-packages" not in booted_json(sysroot)


def test_live_changes_keep_transient_packages_live_and_out_of_the_next_boot(sysroot: Path) -> None:
    base = booted(sysroot)
    lulayer(sysroot, "install", "--live", "--transient", "htop")

    lulayer(sysroot, "install", "--live", "hello-config")  # no --allow-replacement needed: htop stays

    assert {"htop", "hello-config"} <= rpm_names(base)
    assert chroot(base, "htop", "--version").returncode == 0
    assert "hello-config" in rpm_names(pending(sysroot)) and "htop" not in rpm_names(pending(sysroot))
    assert "TransientPackages: htop" in lulayer(sysroot, "status").stdout
    assert lulayer(sysroot, "install", "--live", "--transient", "htop", check=False).returncode == 1

    fixture_build.reboot(sysroot)

    now = booted(sysroot)
    assert "hello-config" in rpm_names(now) and "htop" not in rpm_names(now)


def test_a_later_persistent_install_keeps_a_transient_package_after_reboot(sysroot: Path) -> None:
    lulayer(sysroot, "install", "--live", "--transient", "htop")

    lulayer(sysroot, "install", "htop")

    assert "htop" in rpm_names(pending(sysroot))
    assert "TransientPackages" not in lulayer(sysroot, "status").stdout  # the next boot has it
    fixture_build.reboot(sysroot)
    assert chroot(booted(sysroot), "htop", "--version").returncode == 0


def test_apply_live_reset_drops_transient_packages(sysroot: Path) -> None:
    base = booted(sysroot)
    lulayer(sysroot, "install", "--live", "--transient", "htop")

    lulayer(sysroot, "apply-live", "--reset")

    assert "htop" not in rpm_names(base) and chroot(base, "htop", "--version").returncode != 0
    d = booted_json(sysroot)
    assert "lulayer-transient-packages" not in d and "live-replaced" not in d
    assert commit_of(pending(sysroot)) == commit_of(base)
