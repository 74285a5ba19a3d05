"""The writer's mount namespace of a booted host (mounts.host_writer_namespace), on real mounts.

The test run's private mount namespace stands for the host's (PID 1's): a tmpfs remounted
read-only per mount stands for a read-only /sysroot, and a shared mount for /usr. The
host-only half (joining PID 1's namespace) is checked in the VM tier (tests/vm/test_vm.py).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lulayer import linux
from lulayer.errors import LiveApplyError
from lulayer.mounts import (
    bind_writable,
    host_writer_namespace,
    mount,
    mount_at,
    mount_overlay,
    set_read_only,
    unmount,
)
from lulayer.run import run_in_child

pytestmark = [pytest.mark.root]


@pytest.fixture
def ro_sysroot(tmp_path: Path) -> Iterator[Path]:
    """A writable file system mounted read-only per mount, as ostree mounts /sysroot."""
    root = tmp_path / "sysroot"
    root.mkdir()
    mount("tmpfs", root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV)
    (root / "ostree").mkdir()
    set_read_only(root, True)
    yield root
    while mount_at(root) is not None:
        unmount(root, lazy=True)


def _erofs(path: Path) -> bool:
    try:
        path.write_text("x")
    except OSError as e:
        return e.errno == errno.EROFS
    return False


def test_set_read_only_is_per_mount_and_keeps_the_other_flags(ro_sysroot: Path) -> None:
    info = mount_at(ro_sysroot)
    assert info is not None and {"ro", "nosuid", "nodev"} <= info.options, info
    assert _erofs(ro_sysroot / "ostree/x")
    set_read_only(ro_sysroot, False)
    info = mount_at(ro_sysroot)
    assert info is not None and "rw" in info.options and {"nosuid", "nodev"} <= info.options, info
    (ro_sysroot / "ostree/x").write_text("x")


def test_writer_namespace_writes_where_no_other_process_sees_the_mount_writable(ro_sysroot: Path) -> None:
    def writer() -> None:
        host_writer_namespace([ro_sysroot])
        (ro_sysroot / "ostree/written").write_text("by the writer")

    run_in_child("test-writer", writer)
    # The file is on the file system; the mount here never became writable.
    assert (ro_sysroot / "ostree/written").read_text() == "by the writer"
    info = mount_at(ro_sysroot)
    assert info is not None and "ro" in info.options, info
    assert _erofs(ro_sysroot / "ostree/other")


def test_bind_writable_makes_a_folder_of_a_read_only_mount_writable(ro_sysroot: Path) -> None:
    back = ro_sysroot / "ostree"
    bind_writable(back)
    try:
        (back / "upper").mkdir()
        assert _erofs(ro_sysroot / "beside")
    finally:
        unmount(back, lazy=True)
    assert _erofs(back / "after")


def test_remounting_what_is_not_a_mount_point_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LiveApplyError, match="not a mount point"):
        set_read_only(tmp_path, True)


def _in_slave(ready: int, go: int, then: Callable[[], None]) -> int:
    """Fork a child that enters a writer namespace, says so on ready, waits for go, runs then;
    returns its pid (it exits 0 when then returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            host_writer_namespace([])
            os.write(ready, b"1")
            os.read(go, 1)
            then()
            code = 0
        finally:
            os._exit(code)
    return pid


def test_an_overlay_mounted_read_only_by_the_host_reaches_the_writer_read_write(tmp_path: Path) -> None:
    """The live overlay: the host mounts it, then makes it read-only per mount; the writer,
    in a slave namespace made before, gets the mount as it was made, writable."""
    usr, upper, work = tmp_path / "usr", tmp_path / "upper", tmp_path / "work"
    for d in (usr, upper, work):
        d.mkdir()
    (usr / "old").write_text("old")
    mount(str(usr), usr, None, linux.MS_BIND)
    mount(None, usr, None, linux.MS_SHARED)
    set_read_only(usr, True)
    r_ready, w_ready = os.pipe()
    r_go, w_go = os.pipe()

    def write_through() -> None:
        info = mount_at(usr)
        assert info is not None and info.fstype == "overlay" and "rw" in info.options, info
        (usr / "new").write_text("by the writer")

    pid = _in_slave(w_ready, r_go, write_through)
    try:
        assert os.read(r_ready, 1) == b"1"
        mount_overlay(usr, usr, upper, work)
        set_read_only(usr, True)
        os.write(w_go, b"1")
    finally:
        _, status = os.waitpid(pid, 0)
        for fd in (r_ready, w_ready, r_go, w_go):
            os.close(fd)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert (usr / "new").read_text() == "by the writer" == (upper / "new").read_text()
        assert _erofs(usr / "mine")
    finally:
        while mount_at(usr) is not None:
            unmount(usr, lazy=True)
