"""Paths that change type, applied live: the replaced-directory set.

typechange 1.0 (fixtures/specs/typechange-1.spec) is layered and booted; its 2.0 turns
each path of CHANGES into another type and keeps none of /usr/lib/typechange's entries.
`upgrade --live --allow-replacement` must make each of them the target commit's at
once, without a moment where the path is missing; killed at any step, the next command
or `apply-live --reset` recovers. Real CLI subprocesses on real folder sysroots, as in
test_live.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from lulayer.apply.live import REPLACE_STEPS, _Failed, _stopped
from lulayer.faults import FAULT_ENV
from lulayer.fsutil import TEMP_NAME_RE
from tests.helpers import (
    DBPATH,
    RPMDB_RUNTIME_FILES,
    booted,
    checkout_subpath,
    chroot,
    commit_of,
    describe,
    fstype_at,
    leftover_temp_paths,
    lulayer,
    next_commit,
    one_error_line,
    ostree_fsck,
    pending,
    point_repo_file,
    rpm,
    staged_record,
    tree_diff,
    tree_entries,
)

pytestmark = pytest.mark.root

SHARE = "/usr/share/typechange"
LIB = "/usr/lib/typechange"  # keeps none of its entries: replaced whole
# Each path's type in typechange 1.0 and in 2.0.
CHANGES = {
    f"{SHARE}/file-to-dir": ("file", "directory"),
    f"{SHARE}/dir-to-file": ("directory", "file"),
    f"{SHARE}/dir-to-symlink": ("directory", "symlink"),
    f"{SHARE}/symlink-to-dir": ("symlink", "directory"),
    f"{SHARE}/symlink-to-file": ("symlink", "file"),
    f"{SHARE}/file-to-symlink": ("file", "symlink"),
}
# The replaced-directory set of the upgrade: file and symlink swaps are plain renames.
REPLACED = (LIB, *(p for p, kinds in CHANGES.items() if "directory" in kinds))
# Fault points of the replaced-directory set: (step, path), each where it means something:
# half-built needs a new tree of several entries, half-removed an old one.
KILLS = [
    *(("replace-half-built", p) for p in (f"{SHARE}/file-to-dir", f"{SHARE}/symlink-to-dir", LIB)),
    *(("replace-built", p) for p in REPLACED),
    *(("replace-swapped", p) for p in REPLACED),
    *(("replace-half-removed", p) for p in (f"{SHARE}/dir-to-file", f"{SHARE}/dir-to-symlink", LIB)),
]
# The steps of every live apply, around those of the replaced-directory set.
APPLY_STEPS = ("files-half", "files", "exchanged", "removed")
SAME_IN_BOTH = f"{SHARE}/keep"


def kind_of(path: Path) -> str | None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    return "directory" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "file"


def xattrs_under(root: Path) -> dict[str, dict[str, bytes]]:
    """ROOT and every path under it with its xattrs, overlayfs' own left out."""
    paths = [str(root), *(os.path.join(d, n) for d, dirs, files in os.walk(root) for n in [*dirs, *files])]
    return {os.path.relpath(p, root): {n: os.getxattr(p, n, follow_symlinks=False)
                                       for n in os.listxattr(p, follow_symlinks=False)
                                       if not n.startswith("trusted.overlay.")} for p in paths}


def temp_names_under(root: Path) -> list[str]:
    """Every file or folder under ROOT named as lulayer names what it writes beside a target."""
    return sorted(os.path.join(d, n) for d, dirs, files in os.walk(root) for n in [*dirs, *files]
                  if TEMP_NAME_RE.match(n))


def assert_typechange_is(sysroot: Path, commit: str, scratch: Path) -> None:
    """The live /usr is COMMIT's, file for file; typechange's folders down to their xattrs;
    nothing in progress, nothing left under a temporary name."""
    live = booted(sysroot)
    scratch.mkdir()
    expected = tree_entries(checkout_subpath(sysroot, commit, "/usr", scratch / "usr"),
                            ignore_names=RPMDB_RUNTIME_FILES)
    diff = tree_diff(expected, tree_entries(live / "usr", ignore_names=RPMDB_RUNTIME_FILES))
    assert not diff, "\n".join(diff[:40])
    for sub in (SHARE, LIB):
        want = checkout_subpath(sysroot, commit, sub, scratch / sub.replace("/", "-"))
        assert xattrs_under(live / sub.lstrip("/")) == xattrs_under(want), sub
    assert temp_names_under(live / "usr") == []
    assert leftover_temp_paths(sysroot) == []
    db = live / DBPATH.lstrip("/")
    assert not (db.parent / (db.name + ".new")).exists()
    assert "live-inprogress" not in booted_status(sysroot)  # left out when unset, as rpm-ostree does
    ostree_fsck(sysroot)


def booted_status(sysroot: Path) -> dict[str, object]:
    """The booted deployment's entry of `lulayer status --json`."""
    (b,) = [d for d in json.loads(lulayer(sysroot, "status", "--json").stdout)["deployments"] if d["booted"]]
    return dict(b)


@pytest.fixture(scope="session")
def typechange_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default repository plus typechange 2.0."""
    return fixture_build.make_repo(tmp_path_factory.mktemp("typechange-repo") / "repo",
                                   [*fixture_build.default_repo_packages(),
                                    fixture_build.rpm_path("typechange", "2.0")])


@pytest.fixture(scope="session")
def typechange_template(tmp_path_factory: pytest.TempPathFactory, typechange_repo: Path) -> Iterator[Path]:
    """A sysroot booted into typechange 1.0 layered, its repository file pointing at
    typechange_repo. Never changed: tests clone it."""
    sysroot = fixture_build.clone_sysroot(fixture_build.sysroot_template(),
                                          tmp_path_factory.mktemp("typechange-template") / "sysroot")
    lulayer(sysroot, "install", "typechange")
    live = fixture_build.reboot(sysroot)
    point_repo_file(live, typechange_repo)
    assert chroot(live, "typechange").stdout == "typechange 1.0\n"
    yield sysroot
    fixture_build.remove_sysroot(sysroot)


@pytest.fixture
def tc_sysroot(typechange_template: Path, tmp_path: Path) -> Iterator[Path]:
    """A clone of typechange_template: typechange 1.0 booted, 2.0 available."""
    sysroot = fixture_build.clone_sysroot(typechange_template, tmp_path / "sysroot")
    yield sysroot
    fixture_build.remove_sysroot(sysroot)


# --------------------------------------------------------------------------- applied live


def test_upgrade_live_turns_every_path_into_its_new_type(tc_sysroot: Path, tmp_path: Path) -> None:
    live = booted(tc_sysroot)
    for path, (old, _new) in CHANGES.items():
        assert kind_of(live / path.lstrip("/")) == old, path
    booted_before = tree_entries(live, with_inodes=True)

    out = lulayer(tc_sysroot, "upgrade", "--live", "--allow-replacement")

    assert "Live replaced: typechange-1.0-1.fc41.noarch -> typechange-2.0-1.fc41.noarch" in out.stdout, out.stdout
    for path, (_old, new) in CHANGES.items():
        assert kind_of(live / path.lstrip("/")) == new, path
    assert sorted(os.listdir(live / LIB.lstrip("/"))) == ["data", "libtypechange.so.2", "plugins-2"]
    assert_typechange_is(tc_sysroot, commit_of(pending(tc_sysroot)), tmp_path / "target")
    assert chroot(live, "typechange").stdout == "typechange 2.0\n"
    assert rpm(live, "-q", "--qf", "%{VERSION}", "typechange").stdout == "2.0"
    b = live / f"{SHARE}/file-to-dir/b".lstrip("/")
    assert os.getxattr(b, "security.capability")  # %caps, carried by the commit's xattrs
    assert (os.lstat(b).st_gid, stat.S_IMODE(os.lstat(b).st_mode)) == (10, 0o750)

    # The booted deployment's own checkout was never written.
    subprocess.run(["umount", "-l", str(live / "usr")], check=True)
    diff = tree_diff(booted_before, tree_entries(live, with_inodes=True))
    assert not diff, "\n".join(diff[:40])


def test_type_changes_over_a_live_layer_apply_too(sysroot: Path, typechange_repo: Path, tmp_path: Path) -> None:
    """typechange 1.0 live, not booted: its tree is in the overlay's upper layer."""
    live = booted(sysroot)
    lulayer(sysroot, "install", "typechange", "--live")
    assert chroot(live, "typechange").stdout == "typechange 1.0\n"
    point_repo_file(live, typechange_repo)

    lulayer(sysroot, "upgrade", "--live", "--allow-replacement")

    for path, (_old, new) in CHANGES.items():
        assert kind_of(live / path.lstrip("/")) == new, path
    assert_typechange_is(sysroot, commit_of(pending(sysroot)), tmp_path / "target")
    assert chroot(live, "typechange").stdout == "typechange 2.0\n"


def test_type_changes_apply_on_an_overlay_without_redirect_dir(tc_sysroot: Path, tmp_path: Path) -> None:
    """An overlay someone else mounted (`ostree admin unlock`) cannot move a lower directory:
    the old tree is removed first, then the new one renamed in its place."""
    live = booted(tc_sysroot)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={live}/usr,upperdir={upper},workdir={work},redirect_dir=off,index=off",
                    str(live / "usr")], check=True)

    out = lulayer(tc_sysroot, "upgrade", "--live", "--allow-replacement")

    assert "file by file" in out.stdout
    for path, (_old, new) in CHANGES.items():
        assert kind_of(live / path.lstrip("/")) == new, path
    assert_typechange_is(tc_sysroot, commit_of(pending(tc_sysroot)), tmp_path / "target")


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize("command", [["upgrade", "--live"], ["apply-live"]], ids=["upgrade", "apply-live"])
def test_type_changes_are_refused_without_allow_replacement(tc_sysroot: Path, command: list[str]) -> None:
    live = booted(tc_sysroot)
    if command[0] == "apply-live":
        lulayer(tc_sysroot, "upgrade")
    before = tree_entries(live / "usr", ignore_names=RPMDB_RUNTIME_FILES)
    deployments = fixture_build.deployments(tc_sysroot)

    refused = lulayer(tc_sysroot, *command, check=False)

    line = one_error_line(refused)
    assert line.startswith("error: the update would turn "), line
    for path, (old, new) in CHANGES.items():
        assert f"{path} from a {old} into a {new}" in line, line
    assert SAME_IN_BOTH not in line and LIB not in line
    assert "pass --allow-replacement" in line
    assert tree_entries(live / "usr", ignore_names=RPMDB_RUNTIME_FILES) == before
    assert chroot(live, "typechange").stdout == "typechange 1.0\n"
    assert not booted_status(tc_sysroot).get("live-inprogress")

    # Refused means nothing changed: no deployment made or staged for the next boot either.
    assert fixture_build.deployments(tc_sysroot) == deployments and staged_record(tc_sysroot) is None
    assert "Upgraded" not in refused.stdout
    lulayer(tc_sysroot, *command, "--allow-replacement")
    assert chroot(live, "typechange").stdout == "typechange 2.0\n"


# --------------------------------------------------------------------------- killed


def _assert_no_moment_with_neither(live: Path, path: str | None) -> None:
    for p in [path] if path else [*CHANGES, LIB]:
        assert kind_of(live / p.lstrip("/")) in {*CHANGES.get(p, ("directory",))}, f"{p} after the kill"


@pytest.mark.parametrize("step,path", [*KILLS, *((s, None) for s in APPLY_STEPS)],
                         ids=[*(f"{s}:{p.rsplit('/', 1)[1]}" for s, p in KILLS), *APPLY_STEPS])
def test_killed_type_change_is_finished_by_next_command_or_reset(tc_sysroot: Path, tmp_path: Path, step: str,
                                                                 path: str | None) -> None:
    assert step in (*REPLACE_STEPS, *APPLY_STEPS)
    live = booted(tc_sysroot)
    point = f"{step}:{path}" if path else step

    # Killed in upgrade --live, finished by the next command to the same target.
    killed = lulayer(tc_sysroot, "upgrade", "--live", "--allow-replacement", check=False, env={FAULT_ENV: point})
    assert killed.returncode == -9, describe(killed)
    _assert_no_moment_with_neither(live, path)
    target = next_commit(tc_sysroot)
    out = lulayer(tc_sysroot, "apply-live")
    assert "Finishing the interrupted live update" in out.stderr, describe(out)
    assert_typechange_is(tc_sysroot, target, tmp_path / "finished")
    assert chroot(live, "typechange").stdout == "typechange 2.0\n"

    # Back to 1.0, killed again at the same point in apply-live, then reset.
    lulayer(tc_sysroot, "apply-live", "--reset")
    killed = lulayer(tc_sysroot, "apply-live", "--allow-replacement", check=False, env={FAULT_ENV: point})
    assert killed.returncode == -9, describe(killed)
    _assert_no_moment_with_neither(live, path)
    lulayer(tc_sysroot, "apply-live", "--reset")
    assert fstype_at(live / "usr") is None
    assert_typechange_is(tc_sysroot, commit_of(live), tmp_path / "reset")
    assert chroot(live, "typechange").stdout == "typechange 1.0\n"


def test_file_to_dir_killed_midway_is_resumed_from_a_clean_start(tc_sysroot: Path, tmp_path: Path) -> None:
    live = booted(tc_sysroot)
    path = f"{SHARE}/file-to-dir"
    killed = lulayer(tc_sysroot, "upgrade", "--live", "--allow-replacement", check=False,
                     env={FAULT_ENV: f"replace-half-built:{path}"})
    assert killed.returncode == -9, describe(killed)
    target = next_commit(tc_sysroot)
    # The old file is in place; the half-built directory beside it, under a temporary name.
    assert (live / path.lstrip("/")).read_text() == "a file in 1.0\n"
    (half,) = [p for p in temp_names_under(live / SHARE.lstrip("/")) if ".file-to-dir." in p]
    assert os.path.isdir(half) and 0 < len(list(Path(half).rglob("*"))) < 4

    out = lulayer(tc_sysroot, "install", "hello-config")  # any mutating command finishes it

    assert "interrupted live update" in out.stderr
    assert not os.path.lexists(half)
    assert sorted(os.listdir(live / path.lstrip("/"))) == ["a", "b", "sub"]
    assert_typechange_is(tc_sysroot, target, tmp_path / "finished")


# --------------------------------------------------------------------------- readers


def test_readers_during_type_changes_see_old_or_new_never_neither(tc_sysroot: Path) -> None:
    live = booted(tc_sysroot)
    qa = ["rpm", "--root", str(live), "--dbpath", DBPATH, "-qa", "--qf", "%{NEVRA}\n"]
    old = frozenset(subprocess.run(qa, capture_output=True, text=True, check=True).stdout.split())
    rpm_samples: list[tuple[int, frozenset[str], str]] = []
    missing: list[tuple[str, float]] = []
    looks = [0]
    stop = threading.Event()

    def rpm_reader() -> None:
        env = dict(os.environ, LC_ALL="C")
        while not stop.is_set():
            p = subprocess.run(qa, capture_output=True, text=True, env=env)
            rpm_samples.append((p.returncode, frozenset(p.stdout.split()), p.stderr))

    def path_reader() -> None:
        paths = [live / p.lstrip("/") for p in (*CHANGES, LIB)]
        while not stop.is_set():
            for p in paths:
                if not os.path.lexists(p):
                    missing.append((str(p), time.monotonic()))
            looks[0] += 1

    threads = [threading.Thread(target=rpm_reader), threading.Thread(target=path_reader)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        for op in (["upgrade", "--live", "--allow-replacement"], ["apply-live", "--reset"],
                   ["apply-live", "--allow-replacement"]):
            lulayer(tc_sysroot, *op)
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()

    new = frozenset(subprocess.run(qa, capture_output=True, text=True, check=True).stdout.split())
    assert "typechange-2.0-1.fc41.noarch" in new and "typechange-1.0-1.fc41.noarch" in old
    bad = [s for s in rpm_samples if s[0] != 0 or s[2] or s[1] not in (old, new)]
    assert not bad, bad[:3]
    assert {s[1] for s in rpm_samples} == {old, new}, "the readers saw only one state"
    print(f"{len(rpm_samples)} rpm -qa runs, {looks[0]} looks at each replaced path: none failed")
    assert not missing, missing[:5]


# --------------------------------------------------------------------------- errors


def test_an_error_that_is_not_a_full_disk_names_path_operation_and_errno(sysroot: Path, typechange_repo: Path,
                                                                          tmp_path: Path) -> None:
    live = booted(sysroot)
    lulayer(sysroot, "install", "htop", "--live")  # the first live change of the boot goes in a layer
    lulayer(sysroot, "install", "typechange", "--live")  # this one through the upper layer
    point_repo_file(live, typechange_repo)
    upper_share = next(sysroot.glob("ostree/deploy/*/backing/*/lulayer-live/upper")) / SHARE.removeprefix("/usr/")
    fixture_build._set_immutable(upper_share, True)  # EPERM for whatever is made in it
    try:
        failed = lulayer(sysroot, "upgrade", "--live", "--allow-replacement", check=False)
    finally:
        fixture_build._set_immutable(upper_share, False)

    line = one_error_line(failed)
    assert re.search(rf"stopped: \w+ .*{live}{SHARE}/\S+ failed: \[Errno {errno.EPERM}\] Operation not permitted",
                     line), line
    assert "free space" not in line and "apply-live" in line, line

    lulayer(sysroot, "apply-live")
    assert_typechange_is(sysroot, commit_of(pending(sysroot)), tmp_path / "target")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EISDIR, errno.EIO])
def test_only_a_full_disk_is_told_to_free_space(code: int) -> None:
    e = _stopped("f" * 64, _Failed("renaming /usr/a over /usr/b", OSError(code, os.strerror(code))))
    assert e.message == (f"the live update to ffffffffffff stopped: renaming /usr/a over /usr/b failed: "
                         f"[Errno {code}] {os.strerror(code)}")
    assert ("free space" in (e.hint or "")) == (code in (errno.ENOSPC, errno.EDQUOT))
    assert "lulayer apply-live" in (e.hint or "")
