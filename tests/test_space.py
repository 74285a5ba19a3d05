"""The live layer's space comes back (issue 19): disk use measured across live install/uninstall/reboot cycles.

bigfile ships 50 MiB of random data. Installed --live as the first live change of a boot, it
lands in the repository, and the live layer (ostree/deploy/OS/backing/DEPLOYMENT/lulayer-live)
holds hardlinks of its objects; installed --live later in the boot, it is written into the
live upper layer too. Once the package is uninstalled, the machine rebooted and the old
deployments cleaned up, the sysroot must be back to its size, within a few MiB, every cycle.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from lulayer.fsutil import tree_usage
from tests.helpers import booted, describe, lulayer, ostree_fsck, repo_of

pytestmark = pytest.mark.root

MIB = 1024 * 1024
BIGFILE = 50 * MIB
SLACK = 4 * MIB  # /etc copies, logs, metadata: what a deployment of the same commit may differ by


def disk_use(sysroot: Path) -> int:
    """The bytes the sysroot's files take on disk, each inode once (du)."""
    return tree_usage(sysroot, linked_elsewhere=True)


def backing_dirs(sysroot: Path) -> list[str]:
    return sorted(p.name for p in sysroot.glob("ostree/deploy/*/backing/*"))


def freed(out: str) -> int:
    """The bytes `cleanup` says it freed."""
    m = re.search(r"^Freed ([0-9.]+) (B|KiB|MiB|GiB)", out, re.M)
    assert m, out
    return int(float(m[1]) * {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}[m[2]])


def test_live_install_uninstall_reboot_cycles_give_the_space_back(sysroot: Path) -> None:
    before = disk_use(sysroot)
    uses = []
    for _ in range(2):
        lulayer(sysroot, "install", "htop", "--live")  # the first live change of the boot: a layer
        lulayer(sysroot, "install", "bigfile", "--live")  # written into the upper layer
        assert (booted(sysroot) / "usr/share/bigfile/data").stat().st_size == BIGFILE
        assert disk_use(sysroot) - before > 2 * BIGFILE  # the live layer and the repository at least
        fixture_build.reboot(sysroot)
        lulayer(sysroot, "uninstall", "htop", "bigfile", "--live")
        fixture_build.reboot(sysroot)
        cleaned = lulayer(sysroot, "cleanup", "--rollback", "--repomd")
        # The old live layer and the pruned objects: 50 MiB each (a file:// repository's RPMs
        # are read in place, not cached).
        assert freed(cleaned.stdout) >= 2 * BIGFILE, describe(cleaned)
        assert backing_dirs(sysroot) == [], "the backing folder of a deployment that is gone was kept"
        uses.append(disk_use(sysroot))
    print(f"disk use: before {before / MIB:.1f} MiB, after each cycle "
          + ", ".join(f"{u / MIB:.1f} MiB" for u in uses))
    for use in uses:
        assert abs(use - before) <= SLACK, (before, uses)
    ostree_fsck(sysroot)


def test_a_new_deployment_removes_the_live_layer_of_the_one_it_replaces(sysroot: Path) -> None:
    # Every command that drops a deployment drops its backing folder with it: here the
    # pending deployment an install replaces, after a live apply on the booted one made it.
    lulayer(sysroot, "install", "bigfile", "--live")
    first = booted(sysroot)
    fixture_build.reboot(sysroot)  # into the deployment with bigfile; `first` is the rollback
    assert backing_dirs(sysroot) == [first.name]
    lulayer(sysroot, "rollback")
    fixture_build.reboot(sysroot)  # back into `first`: its old live layer is no longer mounted
    lulayer(sysroot, "cleanup", "--pending")
    assert backing_dirs(sysroot) == [first.name], "the booted deployment's folder is kept"
    lulayer(sysroot, "install", "htop", "--live")
    assert backing_dirs(sysroot) == [first.name]
    assert (booted(sysroot) / "usr/bin/htop").exists()
    assert not (booted(sysroot) / "usr/share/bigfile").exists()


def test_first_live_install_of_a_boot_takes_no_space_of_its_own(sysroot: Path) -> None:
    lulayer(sysroot, "install", "bigfile", "--live")
    assert (booted(sysroot) / "usr/share/bigfile/data").stat().st_size == BIGFILE
    live_dir = next(sysroot.glob("ostree/deploy/*/backing/*/lulayer-live"))
    assert tree_usage(live_dir) < MIB, "the live layer's files are the repository's objects"
    data = (live_dir / "layer/share/bigfile/data").stat()
    (obj,) = [o for o in repo_of(sysroot).glob("objects/*/*.file") if o.lstat().st_size == BIGFILE]
    assert (data.st_dev, data.st_ino) == (obj.stat().st_dev, obj.stat().st_ino)
    ostree_fsck(sysroot)


def test_cleanup_removes_backing_folders_another_tool_left(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop", "--live")  # the first live change of the boot: a layer
    lulayer(sysroot, "install", "bigfile", "--live")  # written into the upper layer
    first = booted(sysroot)
    fixture_build.reboot(sysroot)
    fixture_build.ostree_admin(sysroot, "undeploy", "1")  # the rollback, `first`, removed by ostree itself
    assert backing_dirs(sysroot) == [first.name]
    out = lulayer(sysroot, "cleanup", "--repomd").stdout
    assert backing_dirs(sysroot) == []
    assert freed(out) >= BIGFILE, out
