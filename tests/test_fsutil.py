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
def test_copy_tree_keeps_metadata_and_makes_no_hardlinks(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _make_tree(src)
    tool = src / "bin" / "tool"
    os.chown(tool, 1001, 1002)
    os.chmod(tool, 0o4711)  # chown cleared the set-id bit
    os.chown(src / "bin" / "link", 1003, 1004, follow_symlinks=False)
    os.setxattr(tool, "security.lulayer", b"label")
    os.setxattr(tool, "trusted.overlay.origin", b"not copied")
    os.setxattr(src / "bin" / "link", "security.lulayer", b"on-link", follow_symlinks=False)
    os.utime(tool, (7_000, 7_000))
    os.utime(src / "bin" / "link", (9_000, 9_000), follow_symlinks=False)

    fsutil.copy_tree(src, dst)

    for rel in ["", "bin", "bin/tool", "bin/link", "bin/dangling", "empty", "hard1", "fifo"]:
        s, d = os.lstat(src / rel), os.lstat(dst / rel)
        assert (d.st_mode, d.st_uid, d.st_gid) == (s.st_mode, s.st_uid, s.st_gid), rel
        assert d.st_mtime_ns == s.st_mtime_ns, rel
        assert d.st_ino != s.st_ino, rel
    dtool = dst / "bin" / "tool"
    assert dtool.read_bytes() == tool.read_bytes()
    assert (os.stat(dtool).st_uid, stat.S_IMODE(os.stat(dtool).st_mode)) == (1001, 0o4711)
    assert os.getxattr(dtool, "user.origin") == b"test"
    assert os.getxattr(dtool, "security.lulayer") == b"label"
    assert "trusted.overlay.origin" not in os.listxattr(dtool)
    assert os.getxattr(dst / "bin" / "link", "security.lulayer", follow_symlinks=False) == (
        b"on-link"
    )
    assert os.readlink(dst / "bin" / "link") == "tool"
    assert os.readlink(dst / "bin" / "dangling") == "/nonexistent/elsewhere"
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode)
    # The source's two links become two independent files.
    h1, h2 = os.stat(dst / "hard1"), os.stat(dst / "hard2")
    assert h1.st_ino != h2.st_ino and h1.st_nlink == h2.st_nlink == 1
    (dst / "hard1").write_bytes(b"changed")
    assert (src / "hard1").read_bytes() == (src / "hard2").read_bytes() == b"shared"


def test_copy_tree_refuses_existing_destination(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    with pytest.raises(FileExistsError):
        fsutil.copy_tree(tmp_path / "src", tmp_path / "dst")


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
