"""/etc after a live apply (issue 19): what a live apply adds to /etc is the package's at the next boot.

cfgpkg ships `%config(noreplace) /etc/cfgpkg.conf` (setting=1.0, 2.0 in cfgpkg 2.0) and its
%post writes /etc/cfgpkg-post.conf (post=1.0 / post=2.0). Each rule of apply/etc.py, as a user
checks it: the file in the booted /etc after a (simulated) reboot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import booted, lulayer, one_error_line, ostree_fsck, pending, point_repo_file, rpm

pytestmark = pytest.mark.root

CONF = "etc/cfgpkg.conf"
POST = "etc/cfgpkg-post.conf"


def read(root: Path, rel: str) -> str | None:
    f = root / rel
    return f.read_text().strip() if f.exists() else None


def offer_cfgpkg_2(sysroot: Path, tmp_path: Path) -> None:
    """Point the booted deployment's repository at one that also has cfgpkg 2.0."""
    repo = fixture_build.make_repo(tmp_path / "repo2", [*fixture_build.default_repo_packages(),
                                                        fixture_build.rpm_path("cfgpkg", "2.0")])
    point_repo_file(booted(sysroot), repo)


def test_install_live_adds_the_config_files_and_status_lists_them(sysroot: Path) -> None:
    out = lulayer(sysroot, "install", "cfgpkg", "--live").stdout
    live = booted(sysroot)
    assert read(live, CONF) == "setting=1.0" and read(live, POST) == "post=1.0"
    assert "Added config: /etc/cfgpkg.conf" in out and "Added config: /etc/cfgpkg-post.conf" in out, out
    status = lulayer(sysroot, "status", "-v").stdout
    assert "LiveEtcAdded: /etc/cfgpkg-post.conf /etc/cfgpkg.conf" in status, status
    assert "LiveEtcAdded" not in lulayer(sysroot, "status").stdout
    deps = json.loads(lulayer(sysroot, "status", "--json").stdout)["deployments"]
    by_booted = {d["booted"]: d for d in deps}
    assert by_booted[True]["lulayer-live-etc-added"] == ["/etc/cfgpkg-post.conf", "/etc/cfgpkg.conf"]
    assert by_booted[False]["lulayer-live-etc-added"] == []


def test_upgrade_after_a_live_install_gives_the_new_version(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "cfgpkg", "--live")
    fixture_build.reboot(sysroot)
    offer_cfgpkg_2(sysroot, tmp_path)
    lulayer(sysroot, "upgrade", "--live", "--allow-replacement")
    root = fixture_build.reboot(sysroot)
    assert read(root, CONF) == "setting=2.0" and read(root, POST) == "post=2.0"
    # OSTree checkouts have mtime 0: rpm -V without mtimes, as on any OSTree system.
    assert rpm(root, "-V", "--nomtime", "cfgpkg").stdout == "", "rpm -V flags a file nobody changed"


def test_uninstall_live_after_a_live_install_removes_the_files_at_the_next_boot(sysroot: Path) -> None:
    lulayer(sysroot, "install", "cfgpkg", "--live")
    fixture_build.reboot(sysroot)
    lulayer(sysroot, "uninstall", "cfgpkg", "--live")
    assert read(booted(sysroot), CONF) == "setting=1.0", "live /etc additions are not undone before the reboot"
    root = fixture_build.reboot(sysroot)
    assert read(root, CONF) is None and read(root, POST) is None


def test_a_deployment_merged_from_the_live_etc_drops_what_the_package_no_longer_ships(sysroot: Path) -> None:
    # The booted deployment's own /etc holds the live apply's files: once the deployment that
    # carried cfgpkg is dropped, the next one is merged from it, and libostree alone would
    # keep them as the administrator's.
    lulayer(sysroot, "install", "cfgpkg", "hello-config", "--live")
    lulayer(sysroot, "cleanup", "--pending")
    lulayer(sysroot, "install", "htop")
    new = pending(sysroot)
    assert read(new, CONF) is None and read(new, POST) is None
    assert not (new / "etc/hello").exists(), "the folder the live apply made goes with its files"
    assert read(booted(sysroot), CONF) == "setting=1.0", "the running /etc is left alone"


def test_an_unchanged_file_becomes_the_new_version_and_is_no_hardlink(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "cfgpkg", "--live")
    lulayer(sysroot, "cleanup", "--pending")
    offer_cfgpkg_2(sysroot, tmp_path)
    lulayer(sysroot, "install", "cfgpkg")
    new = pending(sysroot)
    assert read(new, CONF) == "setting=2.0" and read(new, POST) == "post=2.0"
    assert not (new / (CONF + ".rpmnew")).exists()
    for rel in (CONF, POST):
        st = os.lstat(new / rel)
        assert st.st_nlink == 1, f"{rel} is a hardlink (into the repository?)"
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o644, 0, 0)
    ostree_fsck(sysroot)


def test_a_file_the_administrator_changed_is_kept_with_the_new_version_as_rpmnew(sysroot: Path,
                                                                                 tmp_path: Path) -> None:
    lulayer(sysroot, "install", "cfgpkg", "--live")
    (booted(sysroot) / CONF).write_text("setting=mine\n")
    lulayer(sysroot, "cleanup", "--pending")
    offer_cfgpkg_2(sysroot, tmp_path)
    lulayer(sysroot, "install", "cfgpkg")
    new = pending(sysroot)
    assert read(new, CONF) == "setting=mine"
    assert read(new, CONF + ".rpmnew") == "setting=2.0"
    assert read(new, POST) == "post=2.0", "the scriptlet's file, unchanged, is the new version's"


def test_a_changed_file_of_a_removed_package_is_kept(sysroot: Path) -> None:
    lulayer(sysroot, "install", "cfgpkg", "--live")
    (booted(sysroot) / CONF).write_text("setting=mine\n")
    lulayer(sysroot, "cleanup", "--pending")
    lulayer(sysroot, "install", "htop")
    new = pending(sysroot)
    assert read(new, CONF) == "setting=mine" and not (new / (CONF + ".rpmnew")).exists()
    assert read(new, POST) is None


def test_the_record_goes_with_its_deployment(sysroot: Path) -> None:
    first = booted(sysroot)
    lulayer(sysroot, "install", "cfgpkg", "--live")
    record = first.parent.parent / "backing" / first.name / "lulayer-etc.json"
    assert set(json.loads(record.read_text())) == {"/etc/cfgpkg.conf", "/etc/cfgpkg-post.conf"}
    fixture_build.reboot(sysroot)
    lulayer(sysroot, "cleanup", "--rollback")
    assert not record.parent.exists()


def test_a_corrupt_record_is_refused_in_one_line_and_nothing_changes(sysroot: Path) -> None:
    first = booted(sysroot)
    lulayer(sysroot, "install", "cfgpkg", "--live")
    record = first.parent.parent / "backing" / first.name / "lulayer-etc.json"
    lulayer(sysroot, "cleanup", "--pending")  # the next deployment is merged from this one's /etc
    record.write_text("{not json")
    before = sorted(p.name for p in fixture_build.deployments(sysroot))
    for args in (("status",), ("install", "htop")):
        proc = lulayer(sysroot, *args, check=False)
        one_error_line(proc, f"{record} is unreadable", "remove it")
    assert sorted(p.name for p in fixture_build.deployments(sysroot)) == before
    assert sorted(p.name for p in first.parent.iterdir() if p.is_dir()) == before, "a deployment folder was left"
