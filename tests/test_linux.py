"""lulayer.linux: the system calls Python lacks, on the real file system."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lulayer import fsutil, linux


def test_exchange_swaps_two_directories(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "in-a").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "in-b").write_text("b")
    with fsutil.opened_dir(tmp_path) as d:
        linux.renameat2(d, "a", d, "b", linux.RENAME_EXCHANGE)
    assert os.listdir(tmp_path / "a") == ["in-b"]
    assert os.listdir(tmp_path / "b") == ["in-a"]


def test_exchange_across_directory_fds(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("one")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "f").write_text("two")
    with fsutil.opened_dir(tmp_path / "x") as x, fsutil.opened_dir(tmp_path / "y") as y:
        linux.renameat2(x, "f", y, "f", linux.RENAME_EXCHANGE)
    assert (tmp_path / "x" / "f").read_text() == "two"
    assert (tmp_path / "y" / "f").read_text() == "one"


def test_noreplace_refuses_existing_target(tmp_path: Path) -> None:
    (tmp_path / "src").write_text("new")
    (tmp_path / "dst").write_text("old")
    with fsutil.opened_dir(tmp_path) as d:
        with pytest.raises(OSError) as e:
            linux.renameat2(d, "src", d, "dst", linux.RENAME_NOREPLACE)
        assert e.value.errno == errno.EEXIST
        assert e.value.filename == "src"
        assert (tmp_path / "dst").read_text() == "old"
        linux.renameat2(d, "src", d, "fresh", linux.RENAME_NOREPLACE)
    assert (tmp_path / "fresh").read_text() == "new"
    assert not (tmp_path / "src").exists()


def test_exchange_of_missing_entry_is_enoent(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with fsutil.opened_dir(tmp_path) as d, pytest.raises(FileNotFoundError):
        linux.renameat2(d, "a", d, "nope", linux.RENAME_EXCHANGE)


@pytest.mark.skipif(
    os.uname().machine not in ("x86_64", "aarch64"), reason="raw syscall number is per arch"
)
def test_raw_syscall_fallback_exchanges(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with fsutil.opened_dir(tmp_path) as d:
        assert linux._raw_renameat2(d, b"a", d, b"b", linux.RENAME_EXCHANGE) == 0
    assert (tmp_path / "a").read_text() == "b"
    assert (tmp_path / "b").read_text() == "a", "an exchange, not a rename over"
