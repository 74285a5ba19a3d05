"""Local RPM files (rpm-ostree's LocalPackages): `lulayer install ./pkg.rpm`, alone or mixed with
names, layers the file; it is kept in the OSTree repository, so that later deployments layer it
again after the file is gone, and pinned to that build; the origin records it as rpm-ostree does
(`[packages] requested-local=SHA256:NEVRA`); status shows it; --live works; uninstall by name works.
Bad files are refused in one line with nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from fixtures import rpmpatch
from fixtures.keys import signed_copy, two_keys
from tests.helpers import (
    booted,
    chroot,
    lulayer,
    one_error_line,
    origin_of,
    ostree_fsck,
    pending,
    point_repo_file,
    repo_of,
    rpm_names,
    run,
    tree_snapshot,
)

pytestmark = pytest.mark.root

UPGRADEME_1 = "upgrademe-1.0-1.fc41.x86_64"


def local_copy(tmp_path: Path, name: str, version: str | None = None) -> Path:
    """A copy of a fixture RPM in a folder of the test's own (removed to show the file is not needed)."""
    folder = tmp_path / "downloads"
    folder.mkdir(exist_ok=True)
    src = fixture_build.rpm_path(name, version)
    return Path(shutil.copy2(src, folder / src.name))


def metadata_sha256(rpm_file: Path) -> str:
    """What rpm-ostree names a local package by: the sha256 of its lead, signature and header."""
    data = rpm_file.read_bytes()
    _, end = rpmpatch.main_header_span(data)
    return hashlib.sha256(data[:end]).hexdigest()


def refs(sysroot: Path) -> list[str]:
    return run(["ostree", f"--repo={repo_of(sysroot)}", "refs"], check=True).stdout.split()


def test_install_local_rpm_with_a_name_records_it_and_relayers_it_after_the_file_is_gone(
        sysroot: Path, tmp_path: Path) -> None:
    rpm_file = local_copy(tmp_path, "upgrademe", "1.0")
    entry = f"{metadata_sha256(rpm_file)}:{UPGRADEME_1}"

    lulayer(sysroot, "install", str(rpm_file), "htop")
    nxt = pending(sysroot)
    assert chroot(nxt, "upgrademe", check=True).stdout.strip() == "upgrademe 1.0"
    assert {"upgrademe", "htop", "ncurses-libs"} <= rpm_names(nxt)
    assert f"requested-local={entry};" in origin_of(nxt)
    assert "requested=htop;" in origin_of(nxt)
    assert "lulayer/pkg/upgrademe/1.0-1.fc41.x86__64" in refs(sysroot)
    status = lulayer(sysroot, "status").stdout
    assert f"LocalPackages: {UPGRADEME_1}" in status, status
    deployment = json.loads(lulayer(sysroot, "status", "--json").stdout)["deployments"][0]
    assert deployment["requested-local-packages"] == [UPGRADEME_1]

    # The file is gone and the repository offers 2.0: the next change layers the stored 1.0 again.
    shutil.rmtree(rpm_file.parent)
    lulayer(sysroot, "cleanup", "--repomd")
    point_repo_file(booted(sysroot), fixture_build.make_repo(
        tmp_path / "repo", [*fixture_build.default_repo_packages(), fixture_build.rpm_path("upgrademe", "2.0")]))
    lulayer(sysroot, "install", "postscript")
    nxt = pending(sysroot)
    assert chroot(nxt, "upgrademe", check=True).stdout.strip() == "upgrademe 1.0"
    assert f"requested-local={entry};" in origin_of(nxt)
    ostree_fsck(sysroot)

    lulayer(sysroot, "uninstall", "upgrademe")
    nxt = pending(sysroot)
    assert "upgrademe" not in rpm_names(nxt) and "htop" in rpm_names(nxt)
    assert "requested-local" not in origin_of(nxt)
    # Once no deployment requests it, cleanup drops the stored file.
    assert "lulayer/pkg/upgrademe/1.0-1.fc41.x86__64" in refs(sysroot)
    cached = sysroot / "ostree/deploy/fedora/var/cache/lulayer/local" / f"{UPGRADEME_1}.rpm"
    assert cached.is_file()  # taken out of the repository for the transaction after the file was gone
    lulayer(sysroot, "cleanup", "--rollback")
    assert "lulayer/pkg/upgrademe/1.0-1.fc41.x86__64" not in refs(sysroot)
    assert not cached.exists()
    ostree_fsck(sysroot)


def test_install_several_local_rpms_and_a_name_live(sysroot: Path, tmp_path: Path) -> None:
    # needs-upgrademe requires upgrademe: the other local file provides it.
    files = [local_copy(tmp_path, "upgrademe", "1.0"), local_copy(tmp_path, "needs-upgrademe")]
    lulayer(sysroot, "install", str(files[0]), f"file://{files[1]}", "htop", "--live")  # file:// as rpm-ostree
    live = booted(sysroot)
    assert chroot(live, "upgrademe", check=True).stdout.strip() == "upgrademe 1.0"
    assert (live / "usr/bin/htop").is_file() and (live / "usr/share/needs-upgrademe/README").is_file()
    assert {"upgrademe", "needs-upgrademe", "htop"} <= rpm_names(live)
    assert "LocalPackages: needs-upgrademe-1.0-1.fc41.noarch upgrademe-1.0-1.fc41.x86_64" in lulayer(
        sysroot, "status").stdout

    lulayer(sysroot, "uninstall", "needs-upgrademe", UPGRADEME_1, "--live")
    assert not (live / "usr/bin/upgrademe").exists()
    assert not (live / "usr/share/needs-upgrademe").exists()
    assert (live / "usr/bin/htop").is_file()


def assert_refused_unchanged(sysroot: Path, spec: str, *needles: str) -> None:
    skip = {"repo/tmp", "lock", "deploy/fedora/var/cache"}  # the metadata cache may fill
    before = tree_snapshot(sysroot / "ostree", skip=skip)
    one_error_line(lulayer(sysroot, "install", spec, "htop", check=False), *needles)
    assert tree_snapshot(sysroot / "ostree", skip=skip) == before


def test_missing_file_is_refused(sysroot: Path, tmp_path: Path) -> None:
    assert_refused_unchanged(sysroot, str(tmp_path / "nothing-1.0.rpm"), "nothing-1.0.rpm: no such file")


def test_non_rpm_file_is_refused(sysroot: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.rpm"
    text.write_text("not a package\n" * 100)
    assert_refused_unchanged(sysroot, str(text), "notes.rpm is not an RPM file")


def test_corrupt_rpm_is_refused(sysroot: Path, tmp_path: Path) -> None:
    for where, needle in (("header", "its header does not match"), ("payload", "its payload does not match")):
        rpm_file = local_copy(tmp_path, "htop")
        data = bytearray(rpm_file.read_bytes())
        main_off, main_end = rpmpatch.main_header_span(data)
        at = data.find(b"htop 3.3.0", main_off, main_end) if where == "header" else len(data) - 40
        data[at] ^= 0x01
        bad = rpm_file.with_name(f"htop-{where}.rpm")
        bad.write_bytes(bytes(data))
        assert_refused_unchanged(sysroot, str(bad), f"htop-{where}.rpm is corrupt", needle)


def test_rpm_of_another_architecture_is_refused(sysroot: Path, tmp_path: Path) -> None:
    other = rpmpatch.patch_rpm(fixture_build.rpm_path("upgrademe", "1.0"), tmp_path / "upgrademe-mips.rpm",
                               b"x86_64", b"mips64")
    assert_refused_unchanged(sysroot, str(other), "upgrademe-mips.rpm is built for mips64")


def test_unsigned_rpm_is_refused_where_the_repositories_require_signatures(sysroot: Path, tmp_path: Path) -> None:
    with two_keys(tmp_path / "gpg") as (tree_key, other_key):
        live = booted(sysroot)
        keyfile = live / "etc/pki/rpm-gpg/RPM-GPG-KEY-lulayer-tree"
        keyfile.parent.mkdir(parents=True, exist_ok=True)
        keyfile.write_bytes(tree_key.armored)
        signed = tmp_path / "signed"
        signed.mkdir()
        repo = fixture_build.make_repo(tmp_path / "repo", [signed_copy(fixture_build.rpm_path(n), signed / f"{n}.rpm",
                                                                       tree_key) for n in ("htop", "ncurses-libs")])
        point_repo_file(live, repo)
        f = live / fixture_build.REPO_FILE
        f.write_text(f.read_text().replace("gpgcheck=0", "gpgcheck=1")
                     + "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-lulayer-tree\n")

        assert_refused_unchanged(sysroot, str(local_copy(tmp_path, "upgrademe", "1.0")),
                                 "upgrademe-1.0-1.fc41.x86_64.rpm is not signed", "gpgcheck=1")
        others = signed_copy(fixture_build.rpm_path("upgrademe", "1.0"), tmp_path / "other.rpm", other_key)
        assert_refused_unchanged(sysroot, str(others), "other.rpm has a bad or unknown signature")
        good = signed_copy(fixture_build.rpm_path("upgrademe", "1.0"), tmp_path / "good.rpm", tree_key)
        lulayer(sysroot, "install", str(good), "htop")
        assert chroot(pending(sysroot), "upgrademe", check=True).stdout.strip() == "upgrademe 1.0"
