"""The test fixtures themselves: real RPMs, a real repository, real OSTree sysroots."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures import build as fb

TOP = Path(__file__).resolve().parent.parent

BASE_NVRAS = {
    "setup-2.15.0-1.fc41.noarch",
    "filesystem-3.18-1.fc41.x86_64",
    "busybox-1.35.0-1.fc41.x86_64",
    "kernel-6.1.0-1.fc41.x86_64",
    "fedora-release-41-1.fc41.noarch",
    "baseapp-1.0-1.fc41.noarch",
}
REPO_NVRAS = {
    "htop-3.3.0-1.fc41.x86_64",
    "ncurses-libs-6.4-1.fc41.x86_64",
    "hello-service-1.0-1.fc41.noarch",
    "hello-config-1.0-1.fc41.noarch",
    "postscript-1.0-1.fc41.noarch",
    "upgrademe-1.0-1.fc41.x86_64",
    "typechange-1.0-1.fc41.noarch",
    "conflicts-base-1.0-1.fc41.noarch",
    "manyfiles-1.0-1.fc41.noarch",
    "bigpkg-1.0-1.fc41.noarch",
    "needs-missing-1.0-1.fc41.noarch",
    "cfgpkg-1.0-1.fc41.noarch",
    "bigfile-1.0-1.fc41.noarch",
    "kmodpkg-1.0-1.fc41.noarch",
    "needs-upgrademe-1.0-1.fc41.noarch",
    "needs-new-upgrademe-1.0-1.fc41.noarch",
    "optapp-1.0-1.fc41.noarch",
    "svcuser-1.0-1.fc41.noarch",
}
ALL_NVRAS = BASE_NVRAS | REPO_NVRAS | {"upgrademe-2.0-1.fc41.x86_64", "typechange-2.0-1.fc41.noarch",
                                       "cfgpkg-2.0-1.fc41.noarch"}
QF_NVRA = "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\\n"


def run(*cmd: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=True, check=check)


def rpm_qa(root: Path) -> set[str]:
    out = run("rpm", "--root", root, "--dbpath", "/usr/share/rpm", "-qa", "--qf", QF_NVRA)
    return set(out.stdout.split())


def plain_root(tmp_path: Path, *packages: Path) -> Path:
    """A plain (not OSTree) root with the base image and PACKAGES installed by rpm."""
    root = tmp_path / "root"
    root.mkdir()
    base = [fb.rpm_path(name) for name in fb.BASE_PACKAGES]
    run("rpm", "--root", root, "--dbpath", "/usr/share/rpm", "-i", "--nosignature",
        *base, *packages)  # fmt: skip
    return root


@pytest.fixture
def dnf_base(tmp_path: Path) -> Iterator[Any]:
    """A dnf.Base with no system repository and no host configuration."""
    import dnf

    base = dnf.Base()
    conf = base.conf
    conf.installroot = str(tmp_path / "dnfroot")
    conf.cachedir = str(tmp_path / "dnfcache")
    conf.reposdir = []
    for key, value in {"releasever": "41", "basearch": "x86_64", "arch": "x86_64"}.items():
        conf.substitutions[key] = value
    yield base
    base.close()


def add_repo(base: Any, repo: Path) -> None:
    base.repos.add_new_repo("lulayer-fixtures", base.conf, baseurl=[f"file://{repo}"], gpgcheck=False)
    base.fill_sack(load_system_repo=False)


# --------------------------------------------------------------------------- RPMs


def test_specs_build_real_rpms_with_the_expected_names_and_versions(fixture_rpms: Path) -> None:
    rpms = sorted(fixture_rpms.glob("*.rpm"))
    out = run("rpm", "-qp", "--nosignature", "--qf", QF_NVRA, *rpms).stdout
    assert set(out.split()) == ALL_NVRAS
    assert {f"{nvra}.rpm" for nvra in ALL_NVRAS} == {p.name for p in rpms}


def test_build_rpms_is_cached_and_keyed_by_the_inputs(fixture_rpms: Path) -> None:
    start = time.monotonic()
    assert fb.build_rpms() == fixture_rpms
    assert time.monotonic() - start < 1
    assert fixture_rpms.parent == fb.CACHE
    assert fixture_rpms.name.startswith("rpms-")
    assert not list(fb.CACHE.glob(".rpms-*.tmp-*")), "a half-built cache was left behind"


def test_rpm_path_finds_a_package_and_asks_for_the_version_when_there_are_two() -> None:
    htop = fb.rpm_path("htop")
    assert run("rpm", "-qp", "--nosignature", "--qf", QF_NVRA, htop).stdout.strip() == ("htop-3.3.0-1.fc41.x86_64")
    assert fb.rpm_path("upgrademe", "2.0").name == "upgrademe-2.0-1.fc41.x86_64.rpm"
    with pytest.raises(ValueError, match="upgrademe"):
        fb.rpm_path("upgrademe")
    with pytest.raises(FileNotFoundError):
        fb.rpm_path("no-such-package")


def test_rpm_metadata_dependencies_and_scriptlets() -> None:
    def query(name: str, what: str, version: str | None = None) -> str:
        return run("rpm", "-qp", "--nosignature", what, fb.rpm_path(name, version)).stdout

    assert "ncurses-libs" in query("htop", "--requires").split("\n")
    assert "/bin/sh" not in query("htop", "--requires"), "htop must resolve to htop+ncurses"
    assert "libncursesw.so.6()(64bit)" in query("ncurses-libs", "--provides")
    busybox_provides = query("busybox", "--provides").split("\n")
    assert "/bin/sh" in busybox_provides
    assert "/usr/bin/sh" in busybox_provides
    assert "system-release" in query("fedora-release", "--provides").split("\n")
    assert "no-such-capability" in query("needs-missing", "--requires")
    scripts = query("postscript", "--scripts")
    assert "post-ran" in scripts
    assert ">> /etc/shells" in scripts
    configs = query("hello-config", "--configfiles").split()
    assert configs == ["/etc/hello/defaults.conf", "/etc/hello/hello.conf"]
    manyfiles = query("manyfiles", "--list").split()
    pattern = re.compile(r"/usr/share/manyfiles/d\d\d/f\d\d\d")
    assert len([f for f in manyfiles if pattern.fullmatch(f)]) == 500
    assert "/usr/share/manyfiles/d00/f000" in manyfiles
    bigpkg = query("bigpkg", "--list").split()
    data = re.compile(r"/usr/share/bigpkg/d\d\d/f\d{4}")
    assert len([f for f in bigpkg if data.fullmatch(f)]) == 2000
    assert "/usr/bin/bigpkg" in bigpkg
    assert "/usr/share/upgrademe/only-in-1" in query("upgrademe", "--list", "1.0")
    v2 = query("upgrademe", "--list", "2.0")
    assert "/usr/share/upgrademe/new-in-2" in v2
    assert "only-in-1" not in v2


# --------------------------------------------------------------------------- repository


def test_repository_has_repodata_and_every_layerable_package(fixture_repo: Path) -> None:
    assert (fixture_repo / "repodata" / "repomd.xml").is_file()
    rpms = sorted(fixture_repo.glob("*.rpm"))
    names = run("rpm", "-qp", "--nosignature", "--qf", QF_NVRA, *rpms).stdout.split()
    assert set(names) == REPO_NVRAS
    assert fb.fixture_repo() == fixture_repo


def test_dnf_resolves_htop_to_htop_and_ncurses_libs(fixture_repo: Path, dnf_base: Any) -> None:
    add_repo(dnf_base, fixture_repo)
    dnf_base.install("htop")
    dnf_base.resolve()
    installs = dnf_base.transaction.install_set
    assert sorted(p.name for p in installs) == ["htop", "ncurses-libs"]
    assert {str(p.evr) for p in installs} == {"3.3.0-1.fc41", "6.4-1.fc41"}


def test_dnf_cannot_resolve_needs_missing(fixture_repo: Path, dnf_base: Any) -> None:
    import dnf.exceptions

    add_repo(dnf_base, fixture_repo)
    dnf_base.install("needs-missing")
    with pytest.raises(dnf.exceptions.DepsolveError, match="no-such-capability"):
        dnf_base.resolve()


def test_make_repo_with_upgrademe_2_offers_the_update(tmp_path: Path, dnf_base: Any) -> None:
    repo = fb.make_repo(tmp_path / "repo", fb.default_repo_packages())
    fb.make_repo(repo, [fb.rpm_path("upgrademe", "2.0")])  # added later: an update appears
    add_repo(dnf_base, repo)
    query = dnf_base.sack.query().available().filter(name="upgrademe")
    assert sorted(p.version for p in query) == ["1.0", "2.0"]
    assert [p.version for p in query.latest()] == ["2.0"]
    # upgrademe needs /bin/sh, which only the base image (the system repo) provides.
    assert "/bin/sh" in [str(r) for r in query.latest()[0].requires]


def test_cli_prints_the_repository(fixture_repo: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fixtures.build", "repo"],
        cwd=TOP,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(fixture_repo)


# --------------------------------------------------------------------------- packages, installed


@pytest.mark.root
def test_repository_programs_run_once_installed(tmp_path: Path) -> None:
    root = plain_root(
        tmp_path,
        fb.rpm_path("htop"),
        fb.rpm_path("ncurses-libs"),
        fb.rpm_path("upgrademe", "1.0"),
        fb.rpm_path("hello-config"),
        fb.rpm_path("hello-service"),
    )
    assert run("chroot", root, "htop").stdout == "htop 3.3.0\n"
    assert run("chroot", root, "/usr/bin/htop", "--version").stdout == "htop 3.3.0\n"
    assert run("chroot", root, "upgrademe").stdout == "upgrademe 1.0\n"
    assert "greeting=hello" in run("chroot", root, "hello-config").stdout
    assert "started" in run("chroot", root, "/usr/bin/hello-daemon", "--once").stdout
    unit = (root / "usr/lib/systemd/system/hello.service").read_text()
    assert "ExecStart=/usr/bin/hello-daemon" in unit
    assert "[Install]" in unit


@pytest.mark.root
def test_bigpkg_runs_only_once_all_its_data_files_are_there(tmp_path: Path) -> None:
    # Run from outside the root, as the benchmark runs it from the live /usr.
    root = plain_root(tmp_path, fb.rpm_path("bigpkg"))
    assert run(root / "usr/bin/bigpkg").stdout == "bigpkg 1.0 2000\n"
    (root / "usr/share/bigpkg/d79/f1999").unlink()
    missing = run(root / "usr/bin/bigpkg", check=False)
    assert missing.returncode == 1 and missing.stderr == "bigpkg: 1999 of 2000 data files\n"


@pytest.mark.root
def test_postscript_post_writes_its_stamp_and_appends_to_etc_shells(tmp_path: Path) -> None:
    root = tmp_path / "root"
    plain_root(tmp_path)
    shells = root / "etc/shells"
    inode = shells.stat().st_ino
    run("rpm", "--root", root, "--dbpath", "/usr/share/rpm", "-i", fb.rpm_path("postscript"))
    assert (root / "usr/share/postscript/post-ran").read_text() == "post ran\n"
    assert shells.read_text().splitlines() == [
        "/bin/sh",
        "/usr/bin/sh",
        "/usr/bin/postscript-shell",
    ]
    assert shells.stat().st_ino == inode, "the append must write through the existing inode"


@pytest.mark.root
def test_conflicts_base_conflicts_with_fedora_release(tmp_path: Path) -> None:
    root = plain_root(tmp_path)
    res = run(
        "rpm", "--root", root, "--dbpath", "/usr/share/rpm", "-i", "--test",
        fb.rpm_path("conflicts-base"), check=False,
    )  # fmt: skip
    assert res.returncode != 0
    assert "/usr/lib/os-release" in res.stderr
    assert "conflicts with file from package fedora-release" in res.stderr


# --------------------------------------------------------------------------- sysroot


@pytest.mark.root
def test_base_deployment_has_a_working_bin_sh(sysroot: Path) -> None:
    deployment = fb.booted_deployment(sysroot)
    assert run("chroot", deployment, "/bin/sh", "-c", "echo ok").stdout == "ok\n"
    shown = [name for name in os.listdir(deployment) if not name.startswith(".")]
    assert run("chroot", deployment, "/usr/bin/sh", "-c", "ls / | wc -l").stdout.strip() == str(len(shown))


@pytest.mark.root
def test_base_rpmdb_lists_the_five_base_packages_and_stays_clean(sysroot: Path) -> None:
    deployment = fb.booted_deployment(sysroot)
    assert rpm_qa(deployment) == BASE_NVRAS
    dbdir = deployment / "usr/share/rpm"
    names = {p.name for p in dbdir.iterdir()}
    assert "rpmdb.sqlite" in names
    assert not names & {"rpmdb.sqlite-shm", "rpmdb.sqlite-wal"}, "reading made WAL side files"
    con = sqlite3.connect(f"file:{dbdir / 'rpmdb.sqlite'}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        con.close()
    whatprovides = run("rpm", "--root", deployment, "--dbpath", "/usr/share/rpm", "-q", "--whatprovides", "/bin/sh")
    assert whatprovides.stdout.startswith("busybox-")


@pytest.mark.root
def test_deployment_is_laid_out_like_rpm_ostree(sysroot: Path) -> None:
    d = fb.booted_deployment(sysroot)
    links = {
        "bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64",
        "home": "var/home", "root": "var/roothome", "mnt": "var/mnt", "opt": "var/opt",
        "srv": "var/srv", "media": "run/media", "ostree": "sysroot/ostree",
        "usr/lib/sysimage/rpm": "../../share/rpm",
    }  # fmt: skip
    for link, target in links.items():
        assert os.readlink(d / link) == target, link
    assert (d / fb.RPMOSTREE_MACROS).read_text().strip() == "%_dbpath /usr/share/rpm"
    assert (d / "usr/etc/passwd").read_text().startswith("root:x:0:0:")
    assert (d / "etc/passwd").read_text() == (d / "usr/etc/passwd").read_text()
    assert os.readlink(d / "etc/os-release") == "../usr/lib/os-release"
    assert "VARIANT_ID=silverblue" in (d / "etc/os-release").read_text()
    for empty in ("var", "boot", "tmp", "proc", "sys", "dev", "run", "sysroot"):
        assert (d / empty).is_dir() and not any((d / empty).iterdir()), empty
    kernel = d / "usr/lib/modules" / fb.KERNEL_VERSION
    assert (kernel / "vmlinuz").is_file() and (kernel / "initramfs.img").is_file()
    assert (sysroot / "boot/loader/entries").is_dir()


@pytest.mark.root
def test_deployment_etc_points_dnf_at_the_fixture_repo(sysroot: Path, fixture_repo: Path) -> None:
    d = fb.booted_deployment(sysroot)
    text = (d / fb.REPO_FILE).read_text()
    assert text.splitlines() == [
        "[lulayer-fixtures]",
        "name=lulayer fixtures",
        f"baseurl=file://{fixture_repo}",
        "enabled=1",
        "gpgcheck=0",
    ]
    assert not (d / "usr" / fb.REPO_FILE).exists(), "the .repo file is local /etc state"


@pytest.mark.root
def test_ostree_fsck_is_clean_and_the_commit_has_its_version(sysroot: Path) -> None:
    repo = sysroot / "ostree/repo"
    fsck = run("ostree", "fsck", f"--repo={repo}")
    assert "no errors found" in fsck.stdout
    version = run("ostree", f"--repo={repo}", "show", "--print-metadata-key=version", fb.REF)
    assert version.stdout.strip() == f"'{fb.OS_VERSION}'"
    assert (repo / "config").read_text().count("mode=bare\n") == 1


@pytest.mark.root
def test_booted_marker_names_the_existing_deployment(sysroot: Path) -> None:
    marker = (sysroot / "run/lulayer/booted").read_text()
    assert marker.count("\n") == 1 and marker.endswith("\n")
    rel = marker.strip()
    assert rel.startswith("ostree/deploy/fedora/deploy/") and rel.endswith(".0")
    assert (sysroot / rel).is_dir()
    assert fb.deployments(sysroot) == [sysroot / rel]


@pytest.mark.root
def test_reboot_boots_the_default_deployment_and_clears_run(sysroot: Path) -> None:
    old = fb.booted_deployment(sysroot)
    repo = sysroot / "ostree/repo"
    run("ostree", f"--repo={repo}", "commit", f"--branch={fb.REF}", f"--tree=ref={fb.REF}",
        "--add-metadata-string=version=41.20261202.0", "--fsync=false")  # fmt: skip
    fb.ostree_admin(sysroot, "deploy", "--os=fedora", fb.REF)
    new, rollback = fb.deployments(sysroot)
    assert rollback == old and new != old
    assert fb.booted_deployment(sysroot) == old, "deploying does not boot"
    (sysroot / "run/leftover").write_text("from the previous boot\n")
    (sysroot / "run/mnt").mkdir()
    run("mount", "-t", "tmpfs", "tmpfs", sysroot / "run/mnt")
    run("mount", "--bind", new / "usr", new / "usr")

    assert fb.reboot(sysroot) == new
    assert fb.booted_deployment(sysroot) == new
    assert sorted(p.name for p in (sysroot / "run").iterdir()) == ["lulayer"]
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f" {sysroot}/" not in mounts and f" {sysroot} " not in mounts


@pytest.mark.root
def test_extra_files_grow_the_image_by_that_many_files(make_sysroot: Callable[..., Path]) -> None:
    sysroot = make_sysroot(1000)
    bulk = fb.booted_deployment(sysroot) / "usr/share/bulk"
    files = [p for p in bulk.rglob("*") if p.is_file()]
    assert len(files) == 1000
    assert len({p.read_bytes() for p in files}) == 1000, "contents must be distinct"
    assert all(len(p.relative_to(bulk).parts) == 3 for p in files), "two folder levels"
    per_dir: dict[Path, int] = {}
    for p in files:
        per_dir[p.parent] = per_dir.get(p.parent, 0) + 1
    assert set(per_dir.values()) == {100}
    assert rpm_qa(fb.booted_deployment(sysroot)) == BASE_NVRAS


@pytest.mark.root
def test_clone_keeps_deployment_files_hardlinked_to_repo_objects(tmp_path: Path) -> None:
    template = fb.sysroot_template()
    start = time.monotonic()
    clone = fb.clone_sysroot(template, tmp_path / "clone")
    elapsed = time.monotonic() - start
    try:
        assert elapsed < 1, f"cloning took {elapsed:.2f}s"
        d = fb.booted_deployment(clone)
        busybox = d / "usr/bin/busybox"
        st = busybox.stat()
        assert st.st_nlink > 1
        ls = run("ostree", f"--repo={clone}/ostree/repo", "ls", "-C", fb.REF, "/usr/bin/busybox")
        checksum = ls.stdout.split()[4]
        obj = clone / "ostree/repo/objects" / checksum[:2] / f"{checksum[2:]}.file"
        assert (obj.stat().st_dev, obj.stat().st_ino) == (st.st_dev, st.st_ino)
        original = template / d.relative_to(clone) / "usr/bin/busybox"
        assert original.stat().st_ino != st.st_ino, "the clone must not share the template's"
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
        assert (d / fb.REPO_FILE).is_file()
        assert fb.deployments(clone) == [d]
        lsattr = run("lsattr", "-d", d).stdout.split()[0]
        assert "i" in lsattr, "ostree's immutable deployment folder stays immutable"
        assert "no errors found" in run("ostree", "fsck", f"--repo={clone}/ostree/repo").stdout
    finally:
        fb.remove_sysroot(clone)
    assert not clone.exists()


@pytest.mark.root
def test_remove_sysroot_unmounts_and_removes_immutable_deployments(tmp_path: Path) -> None:
    clone = fb.clone_sysroot(fb.sysroot_template(), tmp_path / "doomed")
    d = fb.booted_deployment(clone)
    run("mount", "-t", "tmpfs", "tmpfs", d / "run")
    fb.remove_sysroot(clone)
    assert not clone.exists()
    assert f" {clone}" not in Path("/proc/self/mountinfo").read_text()


@pytest.mark.root
def test_sysroot_template_is_cached_and_untouched_by_tests(sysroot: Path) -> None:
    template = fb.sysroot_template()
    assert fb.sysroot_template() == template
    assert template.parent == fb.CACHE
    assert fb.booted_deployment(template).is_dir()
    assert sysroot != template
