"""fsutil on the real file system: renames, atomic writes, copies, removals."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from lulayer import fsutil

IS_ROOT = os.geteuid() == 0


def test_exchange_swaps_two_directories(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "in-a").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "in-b").write_text("b")
    with fsutil.opened_dir(tmp_path) as d:
        fsutil.renameat2(d, "a", d, "b", fsutil.RENAME_EXCHANGE)
    assert os.listdir(tmp_path / "a") == ["in-b"]
    assert os.listdir(tmp_path / "b") == ["in-a"]


def test_exchange_across_directory_fds(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("one")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "f").write_text("two")
    with fsutil.opened_dir(tmp_path / "x") as x, fsutil.opened_dir(tmp_path / "y") as y:
        fsutil.renameat2(x, "f", y, "f", fsutil.RENAME_EXCHANGE)
    assert (tmp_path / "x" / "f").read_text() == "two"
    assert (tmp_path / "y" / "f").read_text() == "one"


def test_noreplace_refuses_existing_target(tmp_path: Path) -> None:
    (tmp_path / "src").write_text("new")
    (tmp_path / "dst").write_text("old")
    with fsutil.opened_dir(tmp_path) as d:
        with pytest.raises(OSError) as e:
            fsutil.renameat2(d, "src", d, "dst", fsutil.RENAME_NOREPLACE)
        assert e.value.errno == errno.EEXIST
        assert e.value.filename == "src"
        assert (tmp_path / "dst").read_text() == "old"
        fsutil.renameat2(d, "src", d, "fresh", fsutil.RENAME_NOREPLACE)
    assert (tmp_path / "fresh").read_text() == "new"
    assert not (tmp_path / "src").exists()


def test_exchange_of_missing_entry_is_enoent(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with fsutil.opened_dir(tmp_path) as d, pytest.raises(FileNotFoundError):
        fsutil.renameat2(d, "a", d, "nope", fsutil.RENAME_EXCHANGE)


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


@pytest.mark.skipif(
    os.uname().machine not in ("x86_64", "aarch64"), reason="raw syscall number is per arch"
)
def test_raw_syscall_fallback_exchanges(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with fsutil.opened_dir(tmp_path) as d:
        assert fsutil._syscall_renameat2(d, b"a", d, b"b", fsutil.RENAME_EXCHANGE) == 0
    assert (tmp_path / "a").read_text() == "b"
    assert (tmp_path / "b").read_text() == "a", "an exchange, not a rename over"
