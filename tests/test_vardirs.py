"""Vendor RPMs under /opt and /usr/local on a base that links them into /var (issue 18, point 7).

The fixture base links /opt -> var/opt and /usr/local -> ../var/usrlocal, as a Fedora image does.
optapp ships /opt/vendor/optapp (with a %post writing there) and /usr/local/bin/optapp-local.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import (
    booted,
    checkout_subpath,
    chroot,
    describe,
    lulayer,
    next_commit,
    ostree_fsck,
    pending,
    rpm_names,
    run,
)

pytestmark = pytest.mark.root

CONF = "usr/lib/tmpfiles.d/lulayer-opt-usrlocal.conf"
OPT_LINK = "var/opt/vendor"
LOCAL_LINK = "var/usrlocal/bin/optapp-local"


def boot_tmpfiles(root: Path) -> None:
    """What systemd-tmpfiles-setup.service does at boot, for the deployment folder ROOT."""
    run(["systemd-tmpfiles", f"--root={root}", "--create", "--boot", root / CONF], check=True)


def test_base_links_opt_and_usr_local_into_var(sysroot: Path) -> None:
    root = booted(sysroot)
    assert os.readlink(root / "opt") == "var/opt"
    assert os.readlink(root / "usr/local") == "../var/usrlocal"


def test_opt_package_content_is_kept_in_the_image_under_usr(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "optapp")
    usr = checkout_subpath(sysroot, next_commit(sysroot), "/usr", tmp_path / "usr")
    assert (usr / "lib/opt/vendor/optapp/bin/optapp").is_file()
    assert (usr / "lib/opt/vendor/optapp/post-ran").read_text() == "post ran\n"  # the scriptlet's write
    assert (usr / "lib/usrlocal/bin/optapp-local").is_file()
    # The image's own links into /var are kept as the base has them.
    deployment = pending(sysroot)
    assert os.readlink(deployment / "opt") == "var/opt"
    assert os.readlink(deployment / "usr/local") == "../var/usrlocal"
    assert (deployment / CONF).read_text().splitlines()[2:] == [
        "d /var/usrlocal/bin 0755 root root -",
        "L /var/opt/vendor - - - - ../../usr/lib/opt/vendor",
        "L /var/usrlocal/bin/optapp-local - - - - ../../../usr/lib/usrlocal/bin/optapp-local",
    ]
    assert "optapp" in rpm_names(deployment)
    ostree_fsck(sysroot)


def test_a_package_without_opt_content_adds_no_image_folder(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    deployment = pending(sysroot)
    assert not (deployment / "usr/lib/opt").exists()
    assert not (deployment / "usr/lib/usrlocal").exists()
    assert not (deployment / CONF).exists()


def assert_optapp_runs(root: Path) -> None:
    ran = chroot(root, "/opt/vendor/optapp/bin/optapp")
    assert ran.returncode == 0 and ran.stdout == "optapp 1.0: hello from /opt\n", describe(ran)
    ran = chroot(root, "/usr/local/bin/optapp-local")
    assert ran.returncode == 0 and ran.stdout == "optapp-local 1.0\n", describe(ran)
    assert (root / "opt/vendor/optapp/post-ran").read_text() == "post ran\n"


def test_install_live_opt_package_runs_at_once_and_after_reboot(sysroot: Path) -> None:
    root = booted(sysroot)
    lulayer(sysroot, "install", "--live", "optapp")
    assert os.readlink(root / OPT_LINK) == "../../usr/lib/opt/vendor"
    assert os.readlink(root / LOCAL_LINK) == "../../../usr/lib/usrlocal/bin/optapp-local"
    assert_optapp_runs(root)
    # The next boot: a new deployment folder, whose /var gets the links from the image's tmpfiles.d.
    new_root = fixture_build.reboot(sysroot)
    assert new_root != root
    boot_tmpfiles(new_root)
    assert_optapp_runs(new_root)
    assert "optapp" in rpm_names(new_root)
    ostree_fsck(sysroot)


def test_install_without_live_makes_no_link_in_the_running_system(sysroot: Path) -> None:
    lulayer(sysroot, "install", "optapp")
    root = booted(sysroot)
    assert not os.path.lexists(root / OPT_LINK)
    assert not (root / "usr/lib/opt").exists()


def test_administrators_own_var_opt_folder_is_kept_with_one_warning(sysroot: Path) -> None:
    root = booted(sysroot)
    (root / OPT_LINK).mkdir(parents=True)
    (root / OPT_LINK / "mine").write_text("the administrator's\n")
    proc = lulayer(sysroot, "install", "--live", "optapp")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "/var/opt/vendor is already there and is kept" in warnings[0], describe(proc)
    assert (root / OPT_LINK).is_dir() and not (root / OPT_LINK).is_symlink()
    assert sorted(os.listdir(root / OPT_LINK)) == ["mine"]
    assert (root / OPT_LINK / "mine").read_text() == "the administrator's\n"
    # What does not clash is linked; the package is installed live.
    assert os.readlink(root / LOCAL_LINK) == "../../../usr/lib/usrlocal/bin/optapp-local"
    assert "optapp" in rpm_names(root)


def test_uninstall_live_removes_opt_content_and_links(sysroot: Path) -> None:
    root = booted(sysroot)
    lulayer(sysroot, "install", "--live", "optapp")
    lulayer(sysroot, "uninstall", "--live", "optapp")
    assert not os.path.lexists(root / OPT_LINK)
    assert not os.path.lexists(root / LOCAL_LINK)
    assert not (root / "usr/lib/opt/vendor").exists()
    assert not (root / "usr/lib/usrlocal/bin/optapp-local").exists()
    assert "optapp" not in rpm_names(root)
    assert not (pending(sysroot) / "usr/lib/opt").exists()
    # The link folder tmpfiles.d made stays, as /var/usrlocal/bin does on Fedora.
    assert (root / "var/usrlocal/bin").is_dir()


def test_uninstall_live_keeps_an_administrators_var_opt_folder(sysroot: Path) -> None:
    root = booted(sysroot)
    (root / OPT_LINK).mkdir(parents=True)
    lulayer(sysroot, "install", "--live", "optapp")
    lulayer(sysroot, "uninstall", "--live", "optapp")
    assert (root / OPT_LINK).is_dir()


def test_install_for_the_next_boot_names_an_administrators_var_opt_folder(sysroot: Path) -> None:
    root = booted(sysroot)
    (root / OPT_LINK).mkdir(parents=True)
    proc = lulayer(sysroot, "install", "optapp")
    said = [line for line in proc.stdout.splitlines() if "/var/opt/vendor" in line]
    assert len(said) == 1 and "is already there and is kept" in said[0], describe(proc)
    assert (root / OPT_LINK).is_dir() and not (root / OPT_LINK).is_symlink()


def test_opt_package_installs_live_on_a_dnf_built_image_layout(make_sysroot: Callable[..., Path]) -> None:
    sysroot = make_sysroot(rpmdb=fixture_build.RpmdbLayout.SYSIMAGE)
    lulayer(sysroot, "install", "--live", "optapp")
    assert_optapp_runs(booted(sysroot))
    ran = run(["rpm", "--root", str(booted(sysroot)), "--dbpath", "/usr/lib/sysimage/rpm", "-qf",
               "/opt/vendor/optapp/bin/optapp"])
    assert ran.returncode == 0 and ran.stdout.strip() == "optapp-1.0-1.fc41.noarch", describe(ran)
