"""Real overlay mounts (in the test run's private mount namespace)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lulayer import fsutil, linux
from lulayer.errors import LiveApplyError
from lulayer.mounts import (
    MountInfo,
    is_overlay_with_redirect_dir,
    mount_at,
    mount_overlay,
    mounts,
    overlay_dirs,
    parse_mountinfo,
    unmount,
)


@dataclass(frozen=True)
class Layers:
    target: Path
    lower: Path
    upper: Path
    work: Path


@pytest.fixture
def layers(tmp_path: Path) -> Iterator[Layers]:
    # Spaces and a comma in the path check the escaping both ways.
    base = tmp_path / "live, overlay"
    ly = Layers(base / "merged", base / "lower", base / "upper", base / "work")
    for p in (ly.target, ly.lower, ly.upper, ly.work):
        p.mkdir(parents=True)
    (ly.lower / "usr/lib/app").mkdir(parents=True)
    (ly.lower / "usr/lib/app/old.so").write_text("old")
    (ly.lower / "usr/bin").mkdir()
    (ly.lower / "usr/bin/tool").write_text("v1")
    yield ly
    while mount_at(ly.target) is not None:
        unmount(ly.target, lazy=True)


def test_parse_mountinfo_unescapes_and_merges_options() -> None:
    line = (
        "65 43 0:39 / /tmp/a\\040b rw,relatime shared:5 master:1 - overlay overlay "
        "rw,lowerdir=/l\\054x,upperdir=/u,workdir=/w,redirect_dir=on\n"
    )
    (m,) = parse_mountinfo(line)
    assert (m.mount_id, m.parent_id, m.root) == (65, 43, "/")
    assert m.mountpoint == Path("/tmp/a b")
    assert (m.fstype, m.source) == ("overlay", "overlay")
    assert {"rw", "relatime", "redirect_dir=on", "lowerdir=/l,x"} <= m.options
    assert m.option("upperdir") == "/u" and m.option("index") is None
    assert is_overlay_with_redirect_dir(m)
    # Layer paths keep overlay's backslash escapes; ":" separates lower layers.
    (esc,) = parse_mountinfo(
        "66 43 0:40 / /m rw - overlay overlay rw,lowerdir=/a\\134\\054b:/c\\134:d,"
        "upperdir=/u,workdir=/w\n"
    )
    assert overlay_dirs(esc).lower == (Path("/a,b"), Path("/c:d"))
    assert overlay_dirs(esc).upper == Path("/u")
    with pytest.raises(ValueError):
        overlay_dirs(plain_ext4())
    (plain,) = parse_mountinfo("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n")
    assert plain.options == {"rw", "relatime", "discard"}
    assert not is_overlay_with_redirect_dir(plain)


def plain_ext4() -> MountInfo:
    (m,) = parse_mountinfo("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n")
    return m


def test_mounts_reads_this_process_table() -> None:
    assert any(m.mountpoint == Path("/") for m in mounts())
    root = mount_at("/")
    assert root is not None and root.mountpoint == Path("/")


@pytest.mark.root
def test_overlay_writes_go_to_upper_and_lower_is_untouched(layers: Layers) -> None:
    mount_overlay(layers.target, layers.lower, layers.upper, layers.work)
    (layers.target / "usr/bin/tool").write_text("v2")
    (layers.target / "usr/bin/new").write_text("new")
    (layers.target / "usr/lib/app/old.so").unlink()
    assert (layers.target / "usr/bin/tool").read_text() == "v2"
    assert not (layers.target / "usr/lib/app/old.so").exists()
    assert (layers.lower / "usr/bin/tool").read_text() == "v1"
    assert (layers.lower / "usr/lib/app/old.so").read_text() == "old"
    assert not (layers.lower / "usr/bin/new").exists()
    assert (layers.upper / "usr/bin/tool").read_text() == "v2"
    assert (layers.upper / "usr/bin/new").read_text() == "new"


@pytest.mark.root
def test_mount_at_finds_the_overlay_and_unmount_removes_it(layers: Layers) -> None:
    mount_overlay(layers.target, layers.lower, layers.upper, layers.work)
    info = mount_at(layers.target)
    assert info is not None
    assert info.mountpoint == layers.target and info.fstype == "overlay"
    dirs = overlay_dirs(info)
    assert dirs.lower == (layers.lower,)
    assert (dirs.upper, dirs.work) == (layers.upper, layers.work)
    assert is_overlay_with_redirect_dir(info)
    unmount(layers.target)
    assert mount_at(layers.target) is None
    assert os.listdir(layers.target) == []
    with pytest.raises(LiveApplyError, match="not a mount point"):
        unmount(layers.target)


@pytest.mark.root
def test_stacked_mounts_report_the_top_one(layers: Layers, tmp_path: Path) -> None:
    mount_overlay(layers.target, layers.lower, layers.upper, layers.work)
    first = mount_at(layers.target)
    (tmp_path / "u2").mkdir()
    (tmp_path / "w2").mkdir()
    mount_overlay(layers.target, layers.lower, tmp_path / "u2", tmp_path / "w2")
    top = mount_at(layers.target)
    assert first is not None and top is not None
    assert top.parent_id == first.mount_id
    assert overlay_dirs(top).upper == tmp_path / "u2"


@pytest.mark.root
def test_exchange_of_a_lower_dir_needs_redirect_dir(layers: Layers) -> None:
    """The fact live apply is built on: with redirect_dir=on a directory from the lower
    layer can be swapped with RENAME_EXCHANGE; without it overlayfs says EXDEV."""
    mount_overlay(layers.target, layers.lower, layers.upper, layers.work, redirect_dir=False)
    (layers.target / "usr/lib/app.new").mkdir()
    info = mount_at(layers.target)
    assert info is not None and not is_overlay_with_redirect_dir(info)
    with fsutil.opened_dir(layers.target / "usr/lib") as d, pytest.raises(OSError) as e:
        linux.renameat2(d, "app.new", d, "app", linux.RENAME_EXCHANGE)
    assert e.value.errno == errno.EXDEV
    unmount(layers.target)

    for p in (layers.upper, layers.work):
        with fsutil.opened_dir(p.parent) as parent:
            fsutil.remove_tree_at(parent, p.name)
        p.mkdir()
    mount_overlay(layers.target, layers.lower, layers.upper, layers.work)
    (layers.target / "usr/lib/app.new").mkdir()
    (layers.target / "usr/lib/app.new/new.so").write_text("new")
    with fsutil.opened_dir(layers.target / "usr/lib") as d:
        linux.renameat2(d, "app.new", d, "app", linux.RENAME_EXCHANGE)
    assert os.listdir(layers.target / "usr/lib/app") == ["new.so"]
    assert os.listdir(layers.target / "usr/lib/app.new") == ["old.so"]
    assert (layers.lower / "usr/lib/app/old.so").read_text() == "old"


@pytest.mark.root
def test_mount_overlay_failures_are_readable(layers: Layers, tmp_path: Path) -> None:
    with pytest.raises(LiveApplyError, match=r"lowerdir .*No such file"):
        mount_overlay(layers.target, tmp_path / "missing", layers.upper, layers.work)
    (tmp_path / "file").write_text("")
    with pytest.raises(LiveApplyError, match=r"upperdir .* is not a directory"):
        mount_overlay(layers.target, layers.lower, tmp_path / "file", layers.work)
    # workdir inside upperdir is refused by the kernel itself.
    (layers.upper / "w").mkdir()
    with pytest.raises(LiveApplyError, match="cannot mount an overlay"):
        mount_overlay(layers.target, layers.lower, layers.upper, layers.upper / "w")
    assert mount_at(layers.target) is None
