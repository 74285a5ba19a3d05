"""fsutil on the real file system: renames, atomic writes, copies, removals."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from lulayer import fsutil

IS_ROOT = os.geteuid() == 0


def test_write_file_atomic_never_writes_through_a_hardlink(tmp_path: Path) -> None:
    # Stands for a checkout file hardlinked to an OSTree object.
    obj = tmp_path / "object"
    obj.write_bytes(b"repository content")
    (tmp_path / "tree").mkdir()
    os.link(obj, tmp_path / "tree" / "conf")
    with fsutil.opened_dir(tmp_path / "tree") as d:
        fsutil.write_file_atomic(d, "conf", b"edited", mode=0o640, mtime=1_000_000)
    assert obj.read_bytes() == b"repository content"
    assert obj.stat().st_nlink == 1
    st = (tmp_path / "tree" / "conf").stat()
    assert (tmp_path / "tree" / "conf").read_bytes() == b"edited"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime == 1_000_000
    assert st.st_nlink == 1
    # No temp file is left behind.
    assert os.listdir(tmp_path / "tree") == ["conf"]


def test_write_file_atomic_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"keep")
    (tmp_path / "link").symlink_to("target")
    with fsutil.opened_dir(tmp_path) as d:
        fsutil.write_file_atomic(d, "link", b"new")
    assert (tmp_path / "target").read_bytes() == b"keep"
    assert not (tmp_path / "link").is_symlink()
    assert (tmp_path / "link").read_bytes() == b"new"


@pytest.mark.root
def test_write_file_atomic_sets_owner_and_setuid(tmp_path: Path) -> None:
    with fsutil.opened_dir(tmp_path) as d:
        fsutil.write_file_atomic(d, "suid", b"x", mode=0o4755, uid=123, gid=456)
    st = (tmp_path / "suid").stat()
    assert (st.st_uid, st.st_gid) == (123, 456)
    # Set after chown, so the set-id bit survives.
    assert stat.S_IMODE(st.st_mode) == 0o4755


def test_write_file_atomic_rejects_paths(tmp_path: Path) -> None:
    with fsutil.opened_dir(tmp_path) as d, pytest.raises(ValueError):
        fsutil.write_file_atomic(d, "a/b", b"")


def _make_tree(root: Path) -> None:
    root.mkdir()
    (root / "bin").mkdir(mode=0o750)
    f = root / "bin" / "tool"
    f.write_bytes(b"#!/bin/sh\necho hi\n" * 1000)
    f.chmod(0o4711)
    os.setxattr(f, "user.origin", b"test")
    (root / "bin" / "link").symlink_to("tool")
    (root / "bin" / "dangling").symlink_to("/nonexistent/elsewhere")
    (root / "empty").mkdir(mode=0o700)
    (root / "hard1").write_bytes(b"shared")
    os.link(root / "hard1", root / "hard2")
    os.mkfifo(root / "fifo", 0o620)
    os.utime(root / "bin", (5_000, 5_000))
    os.utime(f, (7_000, 7_000))
    os.utime(root / "bin" / "link", (9_000, 9_000), follow_symlinks=False)


@pytest.mark.root
def test_remove_tree_at_does_not_follow_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "a" / "escape").symlink_to(outside)
    (tree / "a" / "b" / "escape-file").symlink_to(outside / "precious")
    (tree / "ro").mkdir()
    (tree / "ro" / "g").write_text("y")
    (tree / "ro").chmod(0o500)  # root ignores this; a non-root run needs it writable
    if not IS_ROOT:
        (tree / "ro").chmod(0o700)
    with fsutil.opened_dir(tmp_path) as d:
        fsutil.remove_tree_at(d, "tree")
    assert not tree.exists()
    assert (outside / "precious").read_text() == "keep"


def test_remove_tree_at_top_symlink_removes_only_the_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "link").symlink_to("real")
    with fsutil.opened_dir(tmp_path) as d:
        fsutil.remove_tree_at(d, "link")
        fsutil.remove_tree_at(d, "missing")  # ENOENT is fine
    assert not (tmp_path / "link").is_symlink()
    assert (tmp_path / "real" / "f").read_text() == "x"


def test_suppress_errno_only_swallows_listed_errnos(tmp_path: Path) -> None:
    with fsutil.suppress_errno(errno.ENOENT):
        os.unlink(tmp_path / "missing")
    with pytest.raises(FileExistsError), fsutil.suppress_errno(errno.ENOENT):
        os.mkdir(tmp_path)


def test_fsync_dir_accepts_fd_and_path(tmp_path: Path) -> None:
    fsutil.fsync_dir(tmp_path)
    fsutil.fsync_dir(str(tmp_path))
    with fsutil.opened_dir(tmp_path) as d:
        fsutil.fsync_dir(d)
    with pytest.raises(NotADirectoryError):
        fsutil.open_dir(Path(__file__))


def test_write_record_removes_what_a_killed_write_of_it_left_and_nothing_else(tmp_path: Path) -> None:
    left = fsutil.temp_name("staged.json")  # a write killed between creating and renaming
    other = fsutil.temp_name("other.json")
    for name in (left, other, "staged.json.bak"):
        (tmp_path / name).write_text("x")
    with fsutil.opened_dir(tmp_path) as d:
        fsutil.write_record(d, "staged.json", b"{}\n")
    assert sorted(os.listdir(tmp_path)) == sorted([other, "staged.json", "staged.json.bak"])
    assert (tmp_path / "staged.json").read_text() == "{}\n"


def test_tree_usage_counts_what_removing_the_tree_frees(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "own").write_bytes(os.urandom(256 * 1024))
    (tree / "twice").write_bytes(os.urandom(128 * 1024))
    os.link(tree / "twice", tree / "sub" / "twice-again")  # both links inside: freed
    (tmp_path / "outside").write_bytes(os.urandom(512 * 1024))
    os.link(tmp_path / "outside", tree / "shared")  # a link outside stays: nothing freed
    os.symlink("/usr", tree / "link")  # not followed

    def blocks(p: Path) -> int:
        return os.lstat(p).st_blocks * 512

    dirs = blocks(tree) + blocks(tree / "sub")
    files = blocks(tree / "sub" / "own") + blocks(tree / "twice") + blocks(tree / "link")
    assert fsutil.tree_usage(tree) == dirs + files
    assert fsutil.tree_usage(tree, linked_elsewhere=True) == dirs + files + blocks(tree / "shared")
    assert fsutil.tree_usage(tree / "shared") == 0
    assert fsutil.tree_usage(tmp_path / "missing") == 0
