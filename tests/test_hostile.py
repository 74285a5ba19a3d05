"""Hostile packages and origins: refused in one line before anything is written, and nothing is
ever written outside the tree.

The hostile RPMs are built from fixtures/specs/hostile/ (kept out of the default repository)
into a repository of their own; those no spec can make (a `..` path, a name over NAME_MAX) are
patched from them by fixtures/rpmpatch.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from fixtures import rpmpatch
from tests.helpers import (
    BASE,
    WITH_HTOP,
    booted,
    build_spec_dir,
    commit_of,
    describe,
    fstype_at,
    lulayer,
    one_error_line,
    pending,
    point_repo_file,
    repo_of,
    rpm,
    rpm_names,
    run,
)
from tests.invariants import Untouched, assert_live_is, live_state, requested

pytestmark = pytest.mark.root

HOSTILE_SPECS = fixture_build.SPECS / "hostile"


@pytest.fixture(scope="session")
def hostile_rpms() -> Path:
    return build_spec_dir(HOSTILE_SPECS, "hostile-rpms")


def hostile_rpm(folder: Path, name: str) -> Path:
    (found,) = [p for p in folder.glob("*.rpm") if p.name.startswith(f"{name}-1.0-")]
    return found


def use_repo(sysroot: Path, repo_dir: Path, *extra: Path) -> Path:
    """A repository of the default packages plus EXTRA, used by the booted deployment."""
    repo = fixture_build.make_repo(repo_dir, [*fixture_build.default_repo_packages(), *extra])
    point_repo_file(booted(sysroot), repo)
    return repo


def assert_refused_untouched(sysroot: Path, before: Untouched) -> None:
    """A refused install left the sysroot as it was, the live /usr included."""
    assert Untouched.of(sysroot) == before
    assert live_state(sysroot) is None
    assert fstype_at(booted(sysroot) / "usr") is None
    assert list((repo_of(sysroot) / "tmp").glob("lulayer-*")) == []


# --------------------------------------------------------------------------- crafted payload paths


def test_rpmbuild_cleans_dotdot_out_of_payload_paths(hostile_rpms: Path, tmp_path: Path) -> None:
    """rpmbuild never makes a `..` path (rpmCleanPath), so the hostile package is crafted."""
    spec = tmp_path / "dotdot.spec"
    spec.write_text((HOSTILE_SPECS / "hostile-dotdot.spec").read_text().replace(
        "%files\n/usr/share/hostile-dotdot/aa/bb/cc/dd/ee/ff/gg/etc/lulayer-dotdot-evil",
        "%files\n/usr/share/hostile-dotdot/aa/bb/../bb/cc/dd/ee/ff/gg/etc/lulayer-dotdot-evil"))
    built = tmp_path / "built"
    run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {built}", "--define", "__os_install_post %{nil}",
         spec], check=True)
    (rpm_file,) = built.glob("RPMS/*/*.rpm")
    listed = run(["rpm", "-qpl", "--nosignature", str(rpm_file)], check=True).stdout
    assert ".." not in listed, listed
    crafted = rpmpatch.dotdot_rpm(hostile_rpm(hostile_rpms, "hostile-dotdot"), tmp_path / "crafted.rpm")
    check = run(["rpm", "-K", "-v", str(crafted)], check=True).stdout
    assert "BAD" not in check and check.count(": OK") >= 4, check
    listed = run(["rpm", "-qpl", "--nosignature", str(crafted)], check=True).stdout
    assert rpmpatch.DOTDOT_PATH in listed.splitlines(), listed


def test_payload_path_with_dotdot_is_refused(sysroot: Path, hostile_rpms: Path, tmp_path: Path) -> None:
    original = hostile_rpm(hostile_rpms, "hostile-dotdot")
    crafted = rpmpatch.dotdot_rpm(original, tmp_path / original.name)
    use_repo(sysroot, tmp_path / "repo", crafted)
    before = Untouched.of(sysroot)

    refused = lulayer(sysroot, "install", "hostile-dotdot", "--live", check=False)

    one_error_line(refused, f"{original.name} has a file path with '..': {rpmpatch.DOTDOT_PATH}")
    assert_refused_untouched(sysroot, before)
    assert not Path("/etc/lulayer-dotdot-evil").exists()
    assert not list(sysroot.rglob("lulayer-dotdot-evil"))


def test_file_name_of_255_bytes_is_refused_in_one_line(sysroot: Path, hostile_rpms: Path, tmp_path: Path) -> None:
    """NAME_MAX is 255, and rpm unpacks each file under a temporary name (NAME;SUFFIX) that is
    longer: no rpm can install such a file, so the compose refuses the package."""
    package = hostile_rpm(hostile_rpms, "hostile-longname")
    assert len(rpmpatch.LONGNAME_FILE.encode()) == 255
    listed = run(["rpm", "-qpl", "--nosignature", str(package)], check=True).stdout
    assert f"/usr/share/hostile-longname/{rpmpatch.LONGNAME_FILE}" in listed.splitlines(), listed
    use_repo(sysroot, tmp_path / "repo", package)
    before = Untouched.of(sysroot)

    out = lulayer(sysroot, "install", "hostile-longname", "--live", check=False)

    one_error_line(out, f"rpm could not unpack {package.name}",
                   f"/usr/share/hostile-longname/{rpmpatch.LONGNAME_FILE}", "File name too long")
    assert_refused_untouched(sysroot, before)


def test_file_name_over_255_bytes_is_refused_in_one_line(sysroot: Path, hostile_rpms: Path, tmp_path: Path) -> None:
    """A name no Linux file system can hold, in a package otherwise valid: refused in one line,
    nothing written."""
    original = hostile_rpm(hostile_rpms, "hostile-longname")
    crafted = rpmpatch.overlong_name_rpm(original, tmp_path / original.name)
    assert len(rpmpatch.OVERLONG_NAME.encode()) > 255
    listed = run(["rpm", "-qpl", "--nosignature", str(crafted)], check=True).stdout
    assert f"/usr/share/{rpmpatch.OVERLONG_NAME}" in listed.splitlines(), listed
    use_repo(sysroot, tmp_path / "repo", crafted)
    before = Untouched.of(sysroot)

    out = lulayer(sysroot, "install", "hostile-longname", "--live", check=False)

    one_error_line(out, f"rpm could not unpack {original.name}", f"/usr/share/{rpmpatch.OVERLONG_NAME}",
                   "File name too long")
    assert_refused_untouched(sysroot, before)


def test_device_nodes_in_a_package_are_refused(sysroot: Path, hostile_rpms: Path, tmp_path: Path) -> None:
    package = hostile_rpm(hostile_rpms, "hostile-dev")
    use_repo(sysroot, tmp_path / "repo", package)
    before = Untouched.of(sysroot)

    refused = lulayer(sysroot, "install", "hostile-dev", "--live", check=False)

    # The first special file in the header's (sorted) list is named: mem, a character device.
    one_error_line(refused, f"{package.name} has a character device at /usr/share/hostile-dev/mem, "
                            "which an OSTree image cannot hold")
    assert_refused_untouched(sysroot, before)


def test_setuid_and_setgid_bits_survive_image_and_live(sysroot: Path, hostile_rpms: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    use_repo(sysroot, tmp_path / "repo", hostile_rpm(hostile_rpms, "hostile-suid"))

    lulayer(sysroot, "install", "hostile-suid", "--live")

    for root in (pending(sysroot), live):
        assert oct((root / "usr/bin/hostile-suid").lstat().st_mode & 0o7777) == oct(0o4755), root
        assert oct((root / "usr/share/hostile-suid").lstat().st_mode & 0o7777) == oct(0o2775), root
    ran = run(["chroot", str(live), "/usr/bin/hostile-suid"])
    assert ran.stdout.strip() == "hostile-suid", describe(ran)
    verify = rpm(live, "-V", "--nomtime", "hostile-suid")  # OSTree keeps no mtimes
    assert verify.returncode == 0, describe(verify)
    assert_live_is(sysroot, commit_of(pending(sysroot)), tmp_path / "target", set(BASE | {"hostile-suid"}))


# --------------------------------------------------------------------------- symlinks


def test_file_under_another_packages_out_of_tree_symlink_is_refused(sysroot: Path, hostile_rpms: Path,
                                                                    tmp_path: Path) -> None:
    """hostile-evil-link makes /usr/share/hostile-evil a symlink to /etc; hostile-through-link
    ships a file under /usr/share/hostile-evil/. Composed together (the base plus every requested
    package, in one rpm transaction), rpm unpacks the file first, which makes that path a
    folder, and then cannot put the symlink there: the install is refused in one line and
    nothing is written, inside the tree or out."""
    live = booted(sysroot)
    evil_link = hostile_rpm(hostile_rpms, "hostile-evil-link")
    use_repo(sysroot, tmp_path / "repo", evil_link, hostile_rpm(hostile_rpms, "hostile-through-link"))
    host_etc = set(os.listdir("/etc"))
    lulayer(sysroot, "install", "hostile-evil-link", "--live")
    assert os.readlink(live / "usr/share/hostile-evil") == "/etc"
    before = Untouched.of(sysroot)
    live_before = live_state(sysroot)

    out = lulayer(sysroot, "install", "hostile-through-link", "--live", check=False)

    one_error_line(out, f"rpm could not unpack {evil_link.name}", "/usr/share/hostile-evil",
                   "already exists as a directory")
    assert Untouched.of(sysroot) == before
    assert live_state(sysroot) == live_before
    assert os.readlink(live / "usr/share/hostile-evil") == "/etc"
    assert not Path("/etc/lulayer-hostile-through-link").exists()
    assert set(os.listdir("/etc")) == host_etc
    assert not list(sysroot.rglob("lulayer-hostile-through-link"))


def test_symlink_in_live_tree_where_new_directory_goes_is_refused(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    outside = tmp_path / "outside"
    outside.mkdir()
    (live / "usr/share/doc/htop").symlink_to(outside)
    lulayer(sysroot, "install", "hello-config", "--live")  # the first live change of the boot: a layer

    refused = lulayer(sysroot, "install", "htop", "--live", check=False)  # written through the overlay

    one_error_line(refused, f"{live}/usr/share/doc/htop is a symlink where the update puts a directory")
    assert list(outside.iterdir()) == []
    assert (pending(sysroot) / "usr/share/doc/htop/README").is_file(), "the next boot's deployment is complete"
    # The way out the message names: reset, move the symlink aside, apply again.
    lulayer(sysroot, "apply-live", "--reset")
    (live / "usr/share/doc/htop").unlink()
    lulayer(sysroot, "apply-live")
    assert_live_is(sysroot, commit_of(pending(sysroot)), tmp_path / "target", {*WITH_HTOP, "hello-config"})
    assert list(outside.iterdir()) == []


def test_symlink_in_live_tree_where_new_directory_goes_is_hidden_by_the_first_live_layer(sysroot: Path,
                                                                                        tmp_path: Path) -> None:
    live = booted(sysroot)
    outside = tmp_path / "outside"
    outside.mkdir()
    (live / "usr/share/doc/htop").symlink_to(outside)

    lulayer(sysroot, "install", "htop", "--live")  # the layer's directory is above the symlink

    assert (live / "usr/share/doc/htop").is_dir() and not (live / "usr/share/doc/htop").is_symlink()
    assert (live / "usr/share/doc/htop/README").is_file()
    assert list(outside.iterdir()) == []
    assert_live_is(sysroot, commit_of(pending(sysroot)), tmp_path / "target", set(WITH_HTOP))


def test_symlink_in_live_tree_on_a_parent_directory_is_refused(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    outside = tmp_path / "outside"
    outside.mkdir()
    doc = live / "usr/share/doc"
    doc.rmdir()
    doc.symlink_to(outside)

    before = Untouched.of(sysroot)

    refused = lulayer(sysroot, "install", "htop", "--live", check=False)

    # rpm, composing on the booted checkout, will not unpack through the foreign symlink;
    # before this was caught the image silently lacked htop.
    one_error_line(refused, "rpm could not unpack htop-3.3.0-1.fc41.x86_64.rpm", "on file /usr/share/doc/htop")
    assert_refused_untouched(sysroot, before)
    assert list(outside.iterdir()) == []


# --------------------------------------------------------------------------- .origin files: corrupt or hand-edited


def _origin(deployment: Path) -> Path:
    return Path(f"{deployment}.origin")


def test_origin_with_garbage_bytes_is_refused(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    origin = _origin(pending(sysroot))
    origin.write_bytes(b"\x00\xff\xfe[origin\x07 garbage \x89PNG\r\n\x1a\n" + os.urandom(64))
    before = Untouched.of(sysroot)

    for args in (("install", "hello-config"), ("status",), ("apply-live",)):
        # libostree will not load a sysroot with an origin it cannot parse.
        one_error_line(lulayer(sysroot, *args, check=False), f"cannot load the sysroot at {sysroot}",
                       "Invalid UTF-8")
    assert Untouched.of(sysroot) == before


def test_origin_without_refspec_is_refused(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    origin = _origin(pending(sysroot))
    origin.write_text("\n".join(ln for ln in origin.read_text().splitlines() if "refspec" not in ln) + "\n")
    before = Untouched.of(sysroot)

    one_error_line(lulayer(sysroot, "install", "hello-config", check=False),
                   "the deployment's .origin has none of [origin] refspec, baserefspec, container-image-reference")

    assert Untouched.of(sysroot) == before


def test_origin_requesting_a_vanished_package_is_refused(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    origin = _origin(pending(sysroot))
    origin.write_text(origin.read_text().replace("requested=htop;", "requested=htop;no-longer-exists;"))
    assert "no-longer-exists" in origin.read_text()
    before = Untouched.of(sysroot)

    one_error_line(lulayer(sysroot, "install", "hello-config", "--live", check=False),
                   "no package matches 'no-longer-exists' in the enabled repositories")

    assert Untouched.of(sysroot) == before
    assert "no-longer-exists" in lulayer(sysroot, "status").stdout
    # The way out: uninstall the name that no longer resolves.
    lulayer(sysroot, "uninstall", "no-longer-exists")
    assert requested(pending(sysroot)) == {"htop"}
    assert rpm_names(pending(sysroot)) == WITH_HTOP
