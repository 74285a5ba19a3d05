"""Soak: cycles of install --live / uninstall --live on one sysroot. One mount throughout, the
upper layer the same size every cycle from the second (the first install goes live as a layer of
repository links, apply/live.py, and leaves the upper layer empty), no leaked temporary files,
`ostree fsck` clean.

The long run (100 cycles) is marked slow (`-m slow`); a quick one (5 cycles) runs by default.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from lulayer.mounts import mounts as mount_table
from tests.helpers import BASE, booted, leftover_temp_paths, lulayer, ostree_fsck, repo_of, rpm_names
from tests.invariants import backing_dir, objects_count

pytestmark = pytest.mark.root

def upper_usage(sysroot: Path) -> tuple[int, int]:
    """(bytes allocated, entries) of the live overlay's upper layer."""
    total = entries = 0
    for dirpath, dirs, files in os.walk(backing_dir(sysroot) / "upper"):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_blocks * 512
            entries += 1
    return total, entries


def mounts_under(path: Path) -> list[Path]:
    """Mount points strictly under path."""
    top = Path(os.path.realpath(path))
    return [m.mountpoint for m in mount_table() if top in m.mountpoint.parents]


def soak(sysroot: Path, tmpdir: Path, cycles: int) -> None:
    """CYCLES of install --live / uninstall --live; lulayer's temporary files (tempfile's, under
    TMPDIR) go to TMPDIR, private to the test: other runs on the machine share /tmp."""
    live = booted(sysroot)
    tmpdir.mkdir()
    env = {"TMPDIR": str(tmpdir)}
    objects_before = objects_count(sysroot)
    installed: list[tuple[int, int]] = []
    removed: list[tuple[int, int]] = []
    mounts: list[int] = []
    start = time.monotonic()
    for c in range(cycles):
        lulayer(sysroot, "install", "htop", "--live", env=env)
        installed.append(upper_usage(sysroot))
        lulayer(sysroot, "uninstall", "htop", "--live", env=env)
        removed.append(upper_usage(sysroot))
        mounts.append(len(mounts_under(sysroot)))
        assert os.listdir(tmpdir) == [], f"cycle {c}"
        assert list((repo_of(sysroot) / "tmp").glob("lulayer-*")) == [], f"cycle {c}"
        assert leftover_temp_paths(sysroot) == [], f"cycle {c}"
        assert len(fixture_build.deployments(sysroot)) == 2, f"cycle {c}: the next boot's and the booted one"
    elapsed = time.monotonic() - start
    print(f"soak: {cycles} cycles of install --live/uninstall --live in {elapsed:.0f}s; mounts under the sysroot "
          f"{sorted(set(mounts))}; upper layer with htop {min(installed)}..{max(installed)} (bytes, entries), "
          f"without {min(removed)}..{max(removed)}; repository objects {objects_before} -> {objects_count(sysroot)}")
    assert set(mounts) == {1}, mounts
    assert installed[0] == (0, 0), "the first install of the boot went live as a layer: nothing in the upper"
    slack = 64 * 1024
    later = installed[1:]
    assert max(b for b, _ in later) <= later[0][0] + slack, installed
    assert max(b for b, _ in removed) <= removed[0][0] + slack, removed
    assert {e for _, e in later} == {later[0][1]}, installed
    assert {e for _, e in removed} == {removed[0][1]}, removed
    assert rpm_names(live) == BASE
    assert not (live / "usr/bin/htop").exists()
    ostree_fsck(sysroot)


def test_soak_quick(sysroot: Path, tmp_path: Path) -> None:
    soak(sysroot, tmp_path / "tmp", 5)


@pytest.mark.slow
def test_soak_long(sysroot: Path, tmp_path: Path) -> None:
    soak(sysroot, tmp_path / "tmp", 100)
