"""File systems that fill up: the live overlay's upper layer mid-apply, and the OSTree repository
during a compose. One error line, nothing half-applied, finished or undone once space is back.

The small file systems are tmpfs mounts in the test's private mount namespace (conftest.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import (
    BASE,
    WITH_HTOP,
    booted,
    commit_of,
    fstype_at,
    leftover_temp_paths,
    lulayer,
    one_error_line,
    ostree_fsck,
    pending,
    repo_of,
    rpm_names,
    run,
)
from tests.invariants import assert_live_is, backing_dir, live_state, objects_count

pytestmark = pytest.mark.root

# The live apply's error when the upper layer fills: the path and the errno, then the hint.
FULL = "failed: [Errno 28] No space left on device; free space, then run `lulayer apply-live`"

MANYFILE = "usr/share/manyfiles/d00/f000"


def mount_tmpfs(path: Path, size: str) -> Path:
    """A tmpfs of SIZE at PATH (made if missing), in the test's private mount namespace;
    the sysroot's removal unmounts it."""
    path.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    return path


def resize_tmpfs(path: Path, size: str) -> None:
    run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def test_upper_layer_full_mid_apply_is_a_clear_error_and_recovers(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    upper_fs = mount_tmpfs(backing_dir(sysroot), "1m")  # 500 files need ~2 MB of tmpfs pages

    failed = lulayer(sysroot, "install", "manyfiles", "--live", check=False)

    target = commit_of(pending(sysroot))
    one_error_line(failed, f"the live update to {target[:12]} stopped: writing ", FULL,
                   "run `lulayer apply-live` to finish it")
    assert (pending(sysroot) / MANYFILE).is_file(), "the next boot's deployment is complete"
    st = live_state(sysroot)
    assert st and st["inprogress"] == target
    assert rpm_names(live) == BASE, "the rpmdb is swapped only after every file is written"
    written = len(list((live / "usr/share/manyfiles").rglob("f*")))
    print(f"upper layer on a 1 MiB tmpfs: {written} of 500 files written before ENOSPC")
    assert 0 < written < 500
    assert "InterruptedLiveCommit" in lulayer(sysroot, "status").stdout

    resize_tmpfs(upper_fs, "64m")
    lulayer(sysroot, "apply-live")

    assert_live_is(sysroot, target, tmp_path / "target", set(BASE | {"manyfiles"}))
    assert fstype_at(live / "usr") == "overlay"


def test_upper_layer_full_then_reset_returns_to_booted(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    mount_tmpfs(backing_dir(sysroot), "1m")
    failed = lulayer(sysroot, "install", "manyfiles", "--live", check=False)
    one_error_line(failed, f"the live update to {commit_of(pending(sysroot))[:12]} stopped: writing ", FULL)

    lulayer(sysroot, "apply-live", "--reset")

    assert fstype_at(live / "usr") is None
    assert_live_is(sysroot, commit_of(live), tmp_path / "booted", set(BASE))
    assert (pending(sysroot) / MANYFILE).is_file()
    assert os.listdir(backing_dir(sysroot)) == []


def test_upper_layer_filled_by_ballast_recovers_with_next_command(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    upper_fs = mount_tmpfs(backing_dir(sysroot), "16m")
    lulayer(sysroot, "install", "htop", "--live")
    ballast = upper_fs / "ballast"
    vfs = os.statvfs(upper_fs)
    with open(ballast, "wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, vfs.f_bavail * vfs.f_frsize - 256 * 1024)

    failed = lulayer(sysroot, "install", "manyfiles", "--live", check=False)

    target = commit_of(pending(sysroot))
    one_error_line(failed, f"the live update to {target[:12]} stopped: writing ", FULL)
    assert rpm_names(live) == WITH_HTOP
    ballast.unlink()
    out = lulayer(sysroot, "install", "hello-config")  # any mutating command finishes it

    assert "interrupted live update" in out.stderr
    assert_live_is(sysroot, target, tmp_path / "target", set(WITH_HTOP | {"manyfiles"}))
    assert (pending(sysroot) / "usr/bin/hello-config").is_file()
    assert sorted(os.listdir(upper_fs)) == ["upper", "work"]


# manyfiles needs ~2.8 MiB in the compose's upper layer: with 1 MiB free rpm's own space check refuses
# it. libostree adopts the files rpm wrote as its objects (no second copy) and writes only the few
# it cannot adopt, each against its free-space guard (min-free-space-percent, 3% by default): with
# 3 MiB free and core.min-free-space-size set above that, the guard refuses the first such write.
@pytest.mark.parametrize(("free_kib", "min_free", "says"), [
    (1024, None, ("composing the new tree failed: rpm transaction failed: installing package "
                  "manyfiles-1.0-1.fc41.noarch needs", "more space on the / filesystem")),
    (3072, "100MB", ("committing the new tree failed: Writing content object: min-free-space-size 100MB",
                     "would be exceeded")),
], ids=["rpm-space-check", "ostree-min-free-space"])
def test_repository_full_during_compose_is_a_clear_error_and_leaves_no_deployment(
        tmp_path: Path, free_kib: int, min_free: str | None, says: tuple[str, ...]) -> None:
    small = mount_tmpfs(tmp_path / "small", "64m")
    sysroot = fixture_build.clone_sysroot(fixture_build.sysroot_template(), small / "sysroot")
    try:
        vfs = os.statvfs(small)
        used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
        resize_tmpfs(small, f"{used // 1024 + free_kib}k")
        config = ["ostree", "config", f"--repo={repo_of(sysroot)}"]
        if min_free is not None:
            run([*config, "set", "core.min-free-space-size", min_free], check=True)
        deployments = fixture_build.deployments(sysroot)
        objects = objects_count(sysroot)

        failed = lulayer(sysroot, "install", "manyfiles", check=False)

        line = one_error_line(failed, *says)
        print(f"repository full: {line}")
        assert fixture_build.deployments(sysroot) == deployments
        assert objects_count(sysroot) == objects
        assert list((repo_of(sysroot) / "tmp").glob("lulayer-*")) == []
        assert leftover_temp_paths(sysroot) == []
        ostree_fsck(sysroot)

        resize_tmpfs(small, "64m")
        if min_free is not None:
            run([*config, "unset", "core.min-free-space-size"], check=True)
        lulayer(sysroot, "install", "manyfiles", "--live")
        assert rpm_names(booted(sysroot)) == BASE | {"manyfiles"}
        assert (pending(sysroot) / MANYFILE).is_file()
        ostree_fsck(sysroot)
    finally:
        fixture_build.remove_sysroot(small)
