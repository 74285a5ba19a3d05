"""diff_commits on real commits in a real OSTree repository."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import gi
import pytest

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, OSTree  # noqa: E402

from lulayer.apply.diff import (  # noqa: E402
    DirEntry,
    FileEntry,
    TreeDiff,
    WalkStats,
    diff_commits,
    read_dir_meta,
    read_file_object,
)
from lulayer.errors import LiveApplyError  # noqa: E402

IS_ROOT = os.geteuid() == 0
Commit = Callable[[Path], str]


@pytest.fixture
def repo(tmp_path: Path) -> OSTree.Repo:
    r = OSTree.Repo.new(Gio.File.new_for_path(str(tmp_path / "repo")))
    r.create(OSTree.RepoMode.BARE if IS_ROOT else OSTree.RepoMode.BARE_USER_ONLY, None)
    return r


@pytest.fixture
def commit(repo: OSTree.Repo) -> Commit:
    def do(tree: Path) -> str:
        repo.prepare_transaction(None)
        mtree = OSTree.MutableTree.new()
        repo.write_directory_to_mtree(Gio.File.new_for_path(str(tree)), mtree, None, None)
        _, root = repo.write_mtree(mtree, None)
        _, checksum = repo.write_commit(None, "test", None, None, root, None)
        repo.commit_transaction(None)
        return str(checksum)

    return do


def _base(root: Path) -> Path:
    for d in ["usr/bin", "usr/lib/app/plugins", "usr/share/doc/app", "etc"]:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/app").write_text("app v1")
    (root / "usr/bin/app").chmod(0o755)
    (root / "usr/bin/tool").write_text("tool")
    (root / "usr/lib/app/plugins/a.so").write_text("a")
    (root / "usr/lib/app/plugins/b.so").write_text("b")
    (root / "usr/lib/app/libapp.so").write_text("lib")
    (root / "usr/share/doc/app/README").write_text("readme")
    (root / "etc/app.conf").write_text("conf")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _base(tmp_path / "tree")


def _oid(repo: OSTree.Repo, commit: str, path: str) -> str:
    _, root, _ = repo.read_commit(commit, None)
    f = root.resolve_relative_path(path.lstrip("/"))
    f.ensure_resolved()
    return str(f.get_checksum())


def test_identical_trees_give_an_empty_diff(repo: OSTree.Repo, commit: Commit, tree: Path) -> None:
    a = commit(tree)
    b = commit(tree)  # another commit object (new timestamp), same content
    stats = WalkStats()
    d = diff_commits(repo, a, b, stats=stats)
    assert d == TreeDiff()
    assert d.is_empty
    # Only the path down to /usr is read: root, and nothing below /usr.
    assert stats.dirtrees_loaded == 2


def test_added_file_dir_and_symlink(repo: OSTree.Repo, commit: Commit, tree: Path) -> None:
    a = commit(tree)
    (tree / "usr/bin/htop").write_text("htop")
    (tree / "usr/bin/top").symlink_to("htop")
    (tree / "usr/share/htop/icons").mkdir(parents=True)
    (tree / "usr/share/htop/htop.desktop").write_text("[Desktop Entry]")
    (tree / "usr/share/htop/icons/h.png").write_text("png")
    b = commit(tree)
    d = diff_commits(repo, a, b)
    assert [e.path for e in d.added_dirs] == ["/usr/share/htop", "/usr/share/htop/icons"]
    assert sorted(e.path for e in d.added_files) == [
        "/usr/bin/htop",
        "/usr/bin/top",
        "/usr/share/htop/htop.desktop",
        "/usr/share/htop/icons/h.png",
    ]
    for e in d.added_files:
        assert e.checksum == _oid(repo, b, e.path)
    assert d.changed_files == d.removed_files == d.removed_dirs == ()
    # Adding entries changes no directory's own metadata.
    assert d.changed_dirs == ()
    top = read_file_object(
        repo, next(e for e in d.added_files if e.path == "/usr/bin/top").checksum
    )
    assert top.is_symlink and top.symlink_target == "htop" and stat.S_ISLNK(top.mode)
    meta = read_dir_meta(repo, d.added_dirs[0].meta_checksum)
    assert stat.S_ISDIR(meta.mode)
    assert stat.S_IMODE(meta.mode) == stat.S_IMODE((tree / "usr/share/htop").stat().st_mode)


def test_removed_file_and_nested_dir(repo: OSTree.Repo, commit: Commit, tree: Path) -> None:
    a = commit(tree)
    (tree / "usr/bin/tool").unlink()
    shutil.rmtree(tree / "usr/lib/app")
    b = commit(tree)
    d = diff_commits(repo, a, b)
    assert d.removed_files == (
        "/usr/bin/tool",
        "/usr/lib/app/libapp.so",
        "/usr/lib/app/plugins/a.so",
        "/usr/lib/app/plugins/b.so",
    )
    # Children before parents, so they can be rmdir'ed in order.
    assert d.removed_dirs == ("/usr/lib/app/plugins", "/usr/lib/app")
    assert d.added_files == d.added_dirs == d.changed_files == ()


def test_changed_file(repo: OSTree.Repo, commit: Commit, tree: Path) -> None:
    a = commit(tree)
    (tree / "usr/bin/app").write_text("app v2")
    (tree / "usr/bin/tool").chmod(0o700)  # metadata is part of the content checksum
    b = commit(tree)
    d = diff_commits(repo, a, b)
    assert d.changed_files == (
        FileEntry("/usr/bin/app", _oid(repo, b, "/usr/bin/app")),
        FileEntry("/usr/bin/tool", _oid(repo, b, "/usr/bin/tool")),
    )
    assert d.counts()["changed_files"] == 2
    assert sum(d.counts().values()) == 2
    obj = read_file_object(repo, d.changed_files[0].checksum)
    assert obj.read_content() == b"app v2"
    assert stat.S_IMODE(obj.mode) == 0o755 and not obj.is_symlink and obj.size == 6


def test_changed_dir_mode(repo: OSTree.Repo, commit: Commit, tree: Path) -> None:
    a = commit(tree)
    (tree / "usr/share/doc").chmod(0o700)
    b = commit(tree)
    d = diff_commits(repo, a, b)
    assert len(d.changed_dirs) == 1
    assert d.changed_dirs[0].path == "/usr/share/doc"
    assert stat.S_IMODE(read_dir_meta(repo, d.changed_dirs[0].meta_checksum).mode) == 0o700
    assert sum(d.counts().values()) == 1


def test_file_dir_swaps_are_remove_plus_add(repo: OSTree.Repo, commit: Commit, tree: Path) -> None:
    a = commit(tree)
    (tree / "usr/bin/tool").unlink()
    (tree / "usr/bin/tool").mkdir()
    (tree / "usr/bin/tool/inner").write_text("inner")
    shutil.rmtree(tree / "usr/share/doc/app")
    (tree / "usr/share/doc/app").write_text("now a file")
    b = commit(tree)
    d = diff_commits(repo, a, b)
    assert d.removed_files == ("/usr/bin/tool", "/usr/share/doc/app/README")
    assert d.removed_dirs == ("/usr/share/doc/app",)
    assert [e.path for e in d.added_dirs] == ["/usr/bin/tool"]
    assert [e.path for e in d.added_files] == ["/usr/bin/tool/inner", "/usr/share/doc/app"]
    assert d.changed_files == ()
    # And back again.
    back = diff_commits(repo, b, a)
    assert back.removed_dirs == ("/usr/bin/tool",)
    assert [e.path for e in back.added_dirs] == ["/usr/share/doc/app"]


def test_retyped_names_paths_that_turn_between_dir_and_file(repo: OSTree.Repo, commit: Commit,
                                                             tree: Path) -> None:
    a = commit(tree)
    (tree / "usr/bin/tool").unlink()
    (tree / "usr/bin/tool").mkdir()
    (tree / "usr/bin/tool/inner").write_text("inner")
    shutil.rmtree(tree / "usr/share/doc/app")
    (tree / "usr/share/doc/app").symlink_to("../../bin/app")
    (tree / "usr/bin/app").unlink()
    (tree / "usr/bin/app").symlink_to("tool/inner")  # a file into a symlink: both are content objects
    b = commit(tree)
    d = diff_commits(repo, a, b)
    assert d.retyped == {"/usr/bin/tool", "/usr/share/doc/app"}
    assert [e.path for e in d.changed_files] == ["/usr/bin/app"]
    assert diff_commits(repo, b, a).retyped == d.retyped
    assert d.without(d.retyped).paths() == {"/usr/bin/app"}


def test_dir_that_keeps_none_of_its_entries_is_replaced_whole(repo: OSTree.Repo, commit: Commit,
                                                              tree: Path) -> None:
    a = commit(tree)
    app = tree / "usr/lib/app"
    (app / "libapp.so").write_text("lib v2")  # changed
    shutil.rmtree(app / "plugins")  # a subdirectory gone
    (app / "new-plugins").mkdir()  # another one new
    (app / "new-plugins/c.so").write_text("c")
    app.chmod(0o750)
    b = commit(tree)
    d = diff_commits(repo, a, b)
    assert [e.path for e in d.replaced_dirs] == ["/usr/lib/app"]
    assert stat.S_IMODE(read_dir_meta(repo, d.replaced_dirs[0].meta_checksum).mode) == 0o750
    # /usr/lib keeps app, a directory in both. Its content is in the other lists too.
    assert all(p.startswith("/usr/lib/app") for p in d.paths())
    assert d.counts() == {"added_dirs": 1, "added_files": 1, "changed_files": 1, "removed_files": 2,
                          "removed_dirs": 1, "changed_dirs": 1}


def test_dir_that_keeps_a_file_or_a_subdirectory_is_not_replaced(repo: OSTree.Repo, commit: Commit,
                                                                 tree: Path) -> None:
    a = commit(tree)
    (tree / "usr/lib/app/libapp.so").write_text("lib v2")
    (tree / "usr/lib/app/plugins/a.so").write_text("a v2")  # plugins stays a directory
    (tree / "usr/lib/app/plugins/b.so").write_text("b v2")
    (tree / "usr/bin/app").write_text("app v2")  # usr/bin keeps tool
    b = commit(tree)
    d = diff_commits(repo, a, b)
    # plugins keeps none of its files: it is replaced; app keeps plugins, bin keeps tool.
    assert [e.path for e in d.replaced_dirs] == ["/usr/lib/app/plugins"]
    (tree / "usr/lib/app/plugins/a.so").write_text("a")
    c = commit(tree)
    assert diff_commits(repo, a, c).replaced_dirs == ()
    # An empty directory has nothing to replace.
    (tree / "usr/share/empty").mkdir()
    e = commit(tree)
    (tree / "usr/share/empty/new").write_text("new")
    assert diff_commits(repo, e, commit(tree)).replaced_dirs == ()


def test_subpath_filtering(repo: OSTree.Repo, commit: Commit, tree: Path) -> None:
    a = commit(tree)
    (tree / "etc/app.conf").write_text("conf v2")
    (tree / "usr/bin/app").write_text("app v2")
    (tree / "usr/share/doc/app/NEWS").write_text("news")
    (tree / "opt").mkdir()
    (tree / "opt/x").write_text("x")
    b = commit(tree)
    usr = diff_commits(repo, a, b)
    assert [e.path for e in usr.changed_files] == ["/usr/bin/app"]
    assert [e.path for e in usr.added_files] == ["/usr/share/doc/app/NEWS"]
    whole = diff_commits(repo, a, b, "/")
    assert {e.path for e in whole.changed_files} == {"/etc/app.conf", "/usr/bin/app"}
    assert [e.path for e in whole.added_dirs] == ["/opt"]
    assert whole.under("/usr") == usr
    assert whole.under("/usr/") == usr
    assert whole.under("/us").is_empty  # a prefix is a path, not a string prefix
    assert whole.under("/").paths() == whole.paths()
    assert diff_commits(repo, a, b, "/etc").changed_files == (
        FileEntry("/etc/app.conf", _oid(repo, b, "/etc/app.conf")),
    )
    # A subpath missing on one side is an empty tree there.
    opt = diff_commits(repo, a, b, "/opt")
    assert opt.added_dirs == (DirEntry("/opt", opt.added_dirs[0].meta_checksum),)
    assert [e.path for e in opt.added_files] == ["/opt/x"]
    assert diff_commits(repo, b, a, "/opt").removed_dirs == ("/opt",)
    assert diff_commits(repo, a, b, "/nonexistent").is_empty


def test_walk_does_not_descend_identical_subtrees(
    repo: OSTree.Repo, commit: Commit, tree: Path
) -> None:
    many = tree / "usr/share/many"
    for i in range(2000):
        (many / f"d{i:04}").mkdir(parents=True)
        (many / f"d{i:04}" / "f").write_text(str(i))
    a = commit(tree)
    (tree / "usr/bin/app").write_text("app v2")
    (many / "d1234" / "f").write_text("changed")
    b = commit(tree)
    stats = WalkStats()
    d = diff_commits(repo, a, b, stats=stats)
    assert [e.path for e in d.changed_files] == ["/usr/bin/app", "/usr/share/many/d1234/f"]
    # root, /usr, /usr/bin, /usr/share, /usr/share/many, its d1234: both sides each,
    # except the root and /usr on the way down, read once per commit too; out of ~4000
    # dirtrees in the two commits.
    assert stats.dirtrees_loaded == 2 * 6


def test_read_file_object_streams_content_and_metadata(
    repo: OSTree.Repo, commit: Commit, tree: Path, tmp_path: Path
) -> None:
    big = tree / "usr/lib/big"
    big.write_bytes(os.urandom(3 << 20))
    if IS_ROOT:
        os.chown(big, 12, 34)
        os.setxattr(big, "security.lulayer", b"label")
    big.chmod(0o4750)
    c = commit(tree)
    obj = read_file_object(repo, _oid(repo, c, "/usr/lib/big"))
    assert stat.S_ISREG(obj.mode) and stat.S_IMODE(obj.mode) == 0o4750
    assert obj.size == 3 << 20 and obj.symlink_target is None
    if IS_ROOT:
        assert (obj.uid, obj.gid) == (12, 34)
        assert ("security.lulayer", b"label") in obj.xattrs
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        assert obj.write_content(fd) == 3 << 20
        assert obj.write_content(fd) == 3 << 20  # reusable: each call reads afresh
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == big.read_bytes() * 2


def test_unknown_commit_is_a_lulayer_error(repo: OSTree.Repo, commit: Commit, tree: Path) -> None:
    a = commit(tree)
    with pytest.raises(LiveApplyError, match="no commit or ref"):
        diff_commits(repo, a, "no-such-ref")
    with pytest.raises(LiveApplyError, match="cannot read commit"):
        diff_commits(repo, a, "0" * 64)
    with pytest.raises(LiveApplyError, match="cannot read file object"):
        read_file_object(repo, "1" * 64)
