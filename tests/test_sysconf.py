"""Users, groups and tmpfiles entries of packages applied live take effect at once (issue 18,
point 6): systemd-sysusers, then systemd-tmpfiles --create, on the new files only, with --root
on the live root of a folder sysroot (its booted deployment folder).

svcuser ships a sysusers.d user, a tmpfiles.d folder owned by it, and a service running as it.
The service starting as that user on a booted host is tests/vm/test_vm.py's.
"""

from __future__ import annotations

import json
import pwd
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import booted, chroot, describe, lulayer, pending, rpm_names

pytestmark = pytest.mark.root


def account(etc: Path, database: str, name: str) -> str | None:
    """NAME's line in ETC/DATABASE (passwd, group, shadow, gshadow), or None."""
    for line in (etc / database).read_text().splitlines():
        if line.split(":", 1)[0] == name:
            return line
    return None


def test_install_live_creates_the_packages_user_and_its_tmpfiles_folder(sysroot: Path) -> None:
    root = booted(sysroot)
    assert account(root / "etc", "passwd", "svcuser") is None
    proc = lulayer(sysroot, "install", "--live", "svcuser")
    assert "  Created: user svcuser" in proc.stdout.splitlines(), describe(proc)
    assert "  Created: group svcuser" in proc.stdout.splitlines(), describe(proc)
    assert not [line for line in proc.stderr.splitlines() if line.startswith("warning:")], describe(proc)
    user = account(root / "etc", "passwd", "svcuser")
    assert user is not None
    uid, gid = int(user.split(":")[2]), int(user.split(":")[3])
    assert account(root / "etc", "group", "svcuser") is not None
    state = root / "var/lib/svcuser"
    st = state.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, 0o750)
    # The user is the live root's, not the machine running the tests'.
    with pytest.raises(KeyError):
        pwd.getpwnam("svcuser")
    # What the service runs as: the user resolves inside the live root.
    ran = chroot(root, "id", "-u", "svcuser")
    assert ran.returncode == 0 and ran.stdout.strip() == str(uid), describe(ran)


def test_the_next_boot_gets_the_same_users_as_the_live_system(sysroot: Path) -> None:
    lulayer(sysroot, "install", "--live", "svcuser")
    live = account(booted(sysroot) / "etc", "passwd", "svcuser")
    assert live is not None
    for database in ("passwd", "group", "shadow", "gshadow"):
        assert account(pending(sysroot) / "etc", database, "svcuser") == \
            account(booted(sysroot) / "etc", database, "svcuser"), database
    new_root = fixture_build.reboot(sysroot)
    assert account(new_root / "etc", "passwd", "svcuser") == live


def test_apply_live_of_a_written_deployment_adds_the_users_to_it(sysroot: Path) -> None:
    lulayer(sysroot, "install", "svcuser")  # the deployment is written with the booted /etc
    assert account(pending(sysroot) / "etc", "passwd", "svcuser") is None
    lulayer(sysroot, "apply-live")
    live = account(booted(sysroot) / "etc", "passwd", "svcuser")
    assert live is not None
    assert account(pending(sysroot) / "etc", "passwd", "svcuser") == live
    assert account(pending(sysroot) / "etc", "group", "svcuser") == account(booted(sysroot) / "etc", "group", "svcuser")


def test_an_existing_user_is_kept_as_it_is(sysroot: Path) -> None:
    etc = booted(sysroot) / "etc"
    line = "svcuser:x:4242:4242:made by the administrator:/srv/svc:/bin/sh"
    (etc / "passwd").write_text((etc / "passwd").read_text() + line + "\n")
    (etc / "group").write_text((etc / "group").read_text() + "svcuser:x:4242:\n")
    proc = lulayer(sysroot, "install", "--live", "svcuser")
    assert "Created: user svcuser" not in proc.stdout, describe(proc)
    assert account(etc, "passwd", "svcuser") == line
    assert (booted(sysroot) / "var/lib/svcuser").stat().st_uid == 4242


def test_failed_sysusers_is_reported_and_the_files_stay_applied(sysroot: Path) -> None:
    root = booted(sysroot)
    fixture_build._set_immutable(root / "etc", True)  # nothing can be added to /etc
    try:
        proc = lulayer(sysroot, "install", "--live", "svcuser")
    finally:
        fixture_build._set_immutable(root / "etc", False)
    assert proc.returncode == 0, describe(proc)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, describe(proc)
    assert warnings[0].startswith("warning: systemd-sysusers failed: "), describe(proc)
    assert warnings[1].startswith("warning: systemd-tmpfiles --create failed: "), describe(proc)
    assert account(root / "etc", "passwd", "svcuser") is None
    # The file change is not undone.
    assert (root / "usr/bin/svcuser-daemon").is_file()
    assert "svcuser" in rpm_names(root)
    assert "svcuser" in rpm_names(pending(sysroot))


def test_only_the_new_packages_tmpfiles_entries_are_applied(sysroot: Path) -> None:
    root = booted(sysroot)
    # An entry of the base image's own, which a --create of every file would act on.
    base_conf = root / "etc/tmpfiles.d/admin.conf"
    base_conf.parent.mkdir(parents=True, exist_ok=True)
    base_conf.write_text("d /var/lib/admin-only 0755 root root -\n")
    lulayer(sysroot, "install", "--live", "svcuser")
    assert (root / "var/lib/svcuser").is_dir()
    assert not (root / "var/lib/admin-only").exists()


def test_json_output_names_the_users_made_and_no_warnings(sysroot: Path) -> None:
    proc = lulayer(sysroot, "install", "--live", "--json", "svcuser")
    live = json.loads(proc.stdout)["live"]
    assert live["users"] == ["user svcuser", "group svcuser"], proc.stdout
    assert live["warnings"] == [], proc.stdout
    assert "svcuser.service" in live["units"], proc.stdout
