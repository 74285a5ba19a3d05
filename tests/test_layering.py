"""Next-boot layering, end to end: the real CLI on real OSTree folder sysroots.

Every test runs ``python -m lulayer --sysroot SYSROOT ...`` as a subprocess against a
fresh clone of the fixture sysroot (fixtures/build.py) and checks what a user would:
the deployments libostree lists, the files and rpmdb of the new tree, the .origin,
``lulayer status``, and that the booted deployment and the OSTree repository are intact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import build as fixtures_build
from tests.helpers import cli_argv, origin_of, tree_snapshot

TOP = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.root

OSTREE_REPO = Path("ostree/repo")
COMPOSE_WORKER = "lulayer-compose"  # the forked compose child's name (/proc/PID/comm)


# --------------------------------------------------------------------------- helpers


def lulayer(sysroot: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI on SYSROOT; with check, fail the test (showing its output) on non-zero."""
    proc = subprocess.run(
        cli_argv(sysroot, *args), capture_output=True, text=True, cwd=TOP, timeout=timeout,
        env=dict(os.environ, LC_ALL="C.UTF-8"),
    )
    if check:
        assert proc.returncode == 0, (
            f"lulayer {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
        )
    return proc


def booted(sysroot: Path) -> Path:
    return fixtures_build.booted_deployment(sysroot)


def deployments(sysroot: Path) -> list[Path]:
    return fixtures_build.deployments(sysroot)


def assert_same_snapshot(before: dict[str, tuple[object, ...]], after: dict[str, tuple[object, ...]]) -> None:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert not (added or removed or changed), f"added {added[:10]}, removed {removed[:10]}, changed {changed[:10]}"


def fsck(sysroot: Path) -> None:
    proc = subprocess.run(["ostree", "fsck", f"--repo={sysroot / OSTREE_REPO}"], capture_output=True, text=True)
    assert proc.returncode == 0, f"ostree fsck failed:\n{proc.stdout}{proc.stderr}"
    assert "corrupt" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr


def rpm_query(root: Path, *names: str) -> subprocess.CompletedProcess[str]:
    """rpm -q in the tree's own rpmdb (writes rpm's lock/-shm files beside it: never on a tree
    whose bytes a test compares)."""
    return subprocess.run(["rpm", "--root", str(root), "--dbpath", "/usr/share/rpm", "-q", *names],
                          capture_output=True, text=True)


def status_json(sysroot: Path) -> list[dict[str, object]]:
    data = json.loads(lulayer(sysroot, "status", "--json").stdout)
    deps: list[dict[str, object]] = data["deployments"]
    return deps


def packages_of(dep_json: dict[str, object]) -> list[str]:
    """The layered packages' NEVRAs (rpm-ostree's "packages" holds the layered requests)."""
    pkgs = dep_json["lulayer-layered-nevras"]
    assert isinstance(pkgs, list)
    return [str(p) for p in pkgs]


def scratch_dirs(sysroot: Path) -> list[str]:
    tmp = sysroot / OSTREE_REPO / "tmp"
    return sorted(p.name for p in tmp.glob("lulayer-compose-*")) if tmp.is_dir() else []


def point_repo_at(deployment: Path, repo: Path) -> None:
    """Rewrite the fixture .repo file of DEPLOYMENT's /etc to use REPO."""
    repo_file = deployment / fixtures_build.REPO_FILE
    lines = [
        f"baseurl=file://{repo}" if ln.startswith("baseurl=") else ln
        for ln in repo_file.read_text().splitlines()
    ]
    repo_file.write_text("\n".join(lines) + "\n")


def repo_with_upgrade(tmp_path: Path) -> Path:
    return fixtures_build.make_repo(
        tmp_path / "repo",
        [*fixtures_build.default_repo_packages(), fixtures_build.rpm_path("upgrademe", "2.0")],
    )


def ostree_file_checksum(sysroot: Path, commit: str, path: str) -> str:
    """The content object checksum of PATH in COMMIT (`ostree ls -C`)."""
    out = subprocess.run(
        ["ostree", "ls", f"--repo={sysroot / OSTREE_REPO}", "-C", commit, path],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return out[4]


def commit_of(deployment: Path) -> str:
    return deployment.name.rsplit(".", 1)[0]


# --------------------------------------------------------------------------- install


def test_install_htop_makes_pending_deployment_and_leaves_booted_untouched(sysroot: Path) -> None:
    booted_dep = booted(sysroot)
    before = tree_snapshot(booted_dep)
    before_origin = origin_of(booted_dep)

    proc = lulayer(sysroot, "install", "htop")
    assert "htop" in proc.stdout and "ncurses-libs" in proc.stdout

    deps = deployments(sysroot)
    assert len(deps) == 2 and deps[1] == booted_dep
    pending = deps[0]
    assert (pending / "usr/bin/htop").is_file()
    assert (pending / "usr/lib64/libncursesw.so.6").exists()

    # The booted deployment, byte for byte, and its origin.
    assert_same_snapshot(before, tree_snapshot(booted_dep))
    assert origin_of(booted_dep) == before_origin
    fsck(sysroot)

    origin = origin_of(pending)
    assert "[origin]" in origin and "baserefspec=" + fixtures_build.REF in origin
    assert "\nrefspec=" not in origin
    assert "[packages]" in origin and "requested=htop;" in origin

    q = rpm_query(pending, "htop", "ncurses-libs")
    assert q.returncode == 0, q.stdout + q.stderr
    assert "htop-3.3.0" in q.stdout and "ncurses-libs-6.4" in q.stdout

    new_booted = fixtures_build.reboot(sysroot)
    assert new_booted == pending == booted(sysroot)
    assert (new_booted / "usr/bin/htop").is_file()

    text = lulayer(sysroot, "status").stdout
    assert "LayeredPackages: htop" in text
    js = status_json(sysroot)
    for d in js:
        for key in ("id", "osname", "serial", "checksum", "booted", "staged", "requested-packages", "packages"):
            assert key in d, f"status --json lacks {key!r}: {d}"
    first = js[0]
    assert first["booted"] is True and first["staged"] is False
    assert first["osname"] == fixtures_build.OSNAME
    assert first["checksum"] == commit_of(pending)
    assert first["id"] == f"{fixtures_build.OSNAME}-{pending.name}"
    assert first["serial"] == int(pending.name.rsplit(".", 1)[1])
    assert first["base-checksum"] == commit_of(booted_dep)
    assert first["requested-packages"] == ["htop"] and first["packages"] == ["htop"]
    assert any(p.startswith("htop-3.3.0") for p in packages_of(first))
    assert any(p.startswith("ncurses-libs-6.4") for p in packages_of(first))
    assert js[1]["booted"] is False and js[1]["requested-packages"] == []
    assert "base-checksum" not in js[1]  # not layered: left out, as rpm-ostree does


def test_install_commits_on_a_repository_with_fsync_turned_off(sysroot: Path) -> None:
    # core.fsync=false (a repository on a disk thrown away after use): the compose's commit goes through
    # libostree's commit_transaction as it is, without lulayer's two syncfs (compose.commit_transaction).
    config = sysroot / "ostree" / "repo" / "config"
    config.write_text(config.read_text().replace("[core]\n", "[core]\nfsync=false\n", 1))

    lulayer(sysroot, "install", "htop")

    assert (deployments(sysroot)[0] / "usr/bin/htop").is_file()
    assert "fsync=false" in config.read_text()
    fsck(sysroot)


def test_postscript_scriptlet_changes_new_tree_only(sysroot: Path) -> None:
    booted_dep = booted(sysroot)
    base = commit_of(booted_dep)
    obj = ostree_file_checksum(sysroot, base, "/usr/etc/shells")
    obj_path = sysroot / OSTREE_REPO / "objects" / obj[:2] / f"{obj[2:]}.file"
    obj_bytes = obj_path.read_bytes()
    assert b"postscript" not in obj_bytes
    before = tree_snapshot(booted_dep)

    lulayer(sysroot, "install", "postscript")

    pending = deployments(sysroot)[0]
    assert pending != booted_dep
    assert "/usr/bin/postscript-shell" in (pending / "usr/etc/shells").read_text().splitlines()
    assert (pending / "usr/share/postscript/post-ran").read_text().strip() == "post ran"
    # The base commit still names the same, unchanged object for /usr/etc/shells.
    assert ostree_file_checksum(sysroot, base, "/usr/etc/shells") == obj
    assert obj_path.read_bytes() == obj_bytes
    assert b"postscript" not in (booted_dep / "usr/etc/shells").read_bytes()
    assert_same_snapshot(before, tree_snapshot(booted_dep))
    fsck(sysroot)


# --------------------------------------------------------------------------- uninstall


def test_uninstall_htop_removes_it_and_its_dependencies(sysroot: Path) -> None:
    booted_dep = booted(sysroot)
    lulayer(sysroot, "install", "htop")
    fixtures_build.reboot(sysroot)

    proc = lulayer(sysroot, "uninstall", "htop")
    assert "Removed: htop" in proc.stdout and "Removed: ncurses-libs" in proc.stdout
    nxt = deployments(sysroot)[0]
    assert nxt != booted(sysroot)
    assert not (nxt / "usr/bin/htop").exists()
    assert not (nxt / "usr/lib64/libncursesw.so.6").exists()
    assert commit_of(nxt) == commit_of(booted_dep)  # back to the plain base commit
    origin = origin_of(nxt)
    assert "refspec=" + fixtures_build.REF in origin and "baserefspec" not in origin
    assert "requested" not in origin
    q = rpm_query(nxt, "htop", "ncurses-libs")
    assert q.returncode != 0 and "not installed" in q.stdout
    fsck(sysroot)


def test_uninstall_all_removes_every_layered_package(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop", "postscript")
    pending = deployments(sysroot)[0]
    assert "requested=htop;postscript;" in origin_of(pending)

    lulayer(sysroot, "uninstall", "--all")
    nxt = deployments(sysroot)[0]
    assert not (nxt / "usr/bin/htop").exists()
    assert not (nxt / "usr/bin/postscript-shell").exists()
    assert "requested" not in origin_of(nxt)
    assert status_json(sysroot)[0]["requested-packages"] == []
    fsck(sysroot)


# --------------------------------------------------------------------------- upgrade


def test_upgrade_takes_new_version_then_reports_nothing_to_do(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "upgrademe")
    assert (deployments(sysroot)[0] / "usr/share/upgrademe/only-in-1").exists()
    point_repo_at(booted(sysroot), repo_with_upgrade(tmp_path))

    proc = lulayer(sysroot, "upgrade")
    assert "upgrademe" in proc.stdout
    nxt = deployments(sysroot)[0]
    assert (nxt / "usr/share/upgrademe/new-in-2").exists()
    assert not (nxt / "usr/share/upgrademe/only-in-1").exists()
    assert any(p.startswith("upgrademe-2.0") for p in packages_of(status_json(sysroot)[0]))
    fsck(sysroot)

    before = deployments(sysroot)
    again = lulayer(sysroot, "upgrade")
    # The deployment the first upgrade made is still pending: the reboot it needs is said again.
    assert again.stdout.splitlines() == [
        "No upgrade available.",
        "The next boot brings changes the running system lacks: run `systemctl reboot` to use them."], again.stdout
    assert deployments(sysroot) == before


def test_install_other_package_keeps_layered_version(sysroot: Path, tmp_path: Path) -> None:
    lulayer(sysroot, "install", "upgrademe")
    point_repo_at(booted(sysroot), repo_with_upgrade(tmp_path))

    lulayer(sysroot, "install", "htop")
    nxt = deployments(sysroot)[0]
    assert (nxt / "usr/bin/htop").is_file()
    assert (nxt / "usr/share/upgrademe/only-in-1").exists()
    assert not (nxt / "usr/share/upgrademe/new-in-2").exists()
    pkgs = packages_of(status_json(sysroot)[0])
    assert any(p.startswith("upgrademe-1.0") for p in pkgs), pkgs
    assert "requested=htop;upgrademe;" in origin_of(nxt)


# --------------------------------------------------------------------------- rollback, cleanup


def test_rollback_makes_previous_deployment_default(sysroot: Path) -> None:
    base_dep = booted(sysroot)
    lulayer(sysroot, "install", "htop")
    layered = deployments(sysroot)[0]
    fixtures_build.reboot(sysroot)
    assert deployments(sysroot) == [layered, base_dep]

    proc = lulayer(sysroot, "rollback")
    assert commit_of(base_dep)[:12] in proc.stdout
    assert deployments(sysroot) == [base_dep, layered]
    js = status_json(sysroot)
    assert js[0]["checksum"] == commit_of(base_dep) and js[0]["booted"] is False
    assert js[1]["booted"] is True

    fixtures_build.reboot(sysroot)
    assert booted(sysroot) == base_dep
    assert not (booted(sysroot) / "usr/bin/htop").exists()


def test_rollback_with_pending_returns_to_booted(sysroot: Path) -> None:
    base_dep = booted(sysroot)
    lulayer(sysroot, "install", "htop")
    pending = deployments(sysroot)[0]
    lulayer(sysroot, "rollback")
    assert deployments(sysroot)[0] == base_dep
    assert pending in deployments(sysroot)


def test_cleanup_pending_removes_pending_deployment(sysroot: Path) -> None:
    base_dep = booted(sysroot)
    lulayer(sysroot, "install", "htop")
    pending = deployments(sysroot)[0]
    assert pending != base_dep

    proc = lulayer(sysroot, "cleanup", "--pending")
    assert pending.name in proc.stdout
    assert deployments(sysroot) == [base_dep]
    assert not pending.exists()
    assert status_json(sysroot)[0]["booted"] is True
    fsck(sysroot)


# --------------------------------------------------------------------------- dry run


def test_install_dry_run_changes_nothing(sysroot: Path) -> None:
    before = deployments(sysroot)
    snap = tree_snapshot(sysroot / "ostree", skip=["deploy/fedora/var/cache"])
    proc = lulayer(sysroot, "install", "--dry-run", "htop")
    assert "Added: htop" in proc.stdout and "Dry run" in proc.stdout
    assert deployments(sysroot) == before
    assert_same_snapshot(snap, tree_snapshot(sysroot / "ostree", skip=["deploy/fedora/var/cache"]))


# --------------------------------------------------------------------------- concurrency


def _wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_two_installs_at_once_serialize_on_the_lock(sysroot: Path, tmp_path: Path) -> None:
    cmd = cli_argv(sysroot, "install")
    owner = sysroot / "run/lulayer/lock.owner"
    a_err, b_err = tmp_path / "a.err", tmp_path / "b.err"
    with open(a_err, "w") as ae, open(b_err, "w") as be:
        a = subprocess.Popen([*cmd, "htop"], stdout=subprocess.PIPE, stderr=ae, text=True, cwd=TOP)
        try:
            # A holds the lock: freeze it there so B surely finds the lock taken.
            _wait_for(lambda: owner.exists() and owner.read_text().startswith(f"{a.pid} "), what="A's lock")
            os.kill(a.pid, signal.SIGSTOP)
            b = subprocess.Popen([*cmd, "postscript"], stdout=subprocess.PIPE, stderr=be, text=True, cwd=TOP)
            try:
                _wait_for(lambda: "waiting" in b_err.read_text(), what="B to say it waits")
            finally:
                os.kill(a.pid, signal.SIGCONT)
            a_out, _ = a.communicate(timeout=300)
            b_out, _ = b.communicate(timeout=300)
        finally:
            for p in (a, locals().get("b")):
                if p is not None and p.poll() is None:
                    os.kill(p.pid, signal.SIGCONT)
                    p.kill()
                    p.wait()
    b_msg = b_err.read_text()
    assert a.returncode == 0, a_err.read_text()
    assert b.returncode == 0, b_msg
    assert "waiting for the sysroot lock" in b_msg
    assert f"pid {a.pid}" in b_msg, b_msg

    # B built on A's pending deployment: the final one has both.
    deps = deployments(sysroot)
    final = deps[0]
    assert "requested=htop;postscript;" in origin_of(final)
    assert (final / "usr/bin/htop").is_file() and (final / "usr/bin/postscript-shell").is_file()
    assert len(deps) == 2 and deps[1] == booted(sysroot)
    fsck(sysroot)
    assert status_json(sysroot)[0]["requested-packages"] == ["htop", "postscript"]


# --------------------------------------------------------------------------- a killed compose


def _session_procs(sid: int) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except (OSError, ProcessLookupError):
            continue
        found.append((int(entry), comm))
    return found


def test_sigkill_during_compose_leaves_no_deployment_and_next_run_cleans_up(sysroot: Path) -> None:
    before = deployments(sysroot)
    proc = subprocess.Popen(
        cli_argv(sysroot, "install", "manyfiles"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=TOP,
    )
    try:
        _wait_for(lambda: any(c == COMPOSE_WORKER for _, c in _session_procs(proc.pid)) or proc.poll() is not None,
                  what="the compose worker")
        assert proc.poll() is None, "install ended before its compose worker was seen"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _wait_for(lambda: not _session_procs(proc.pid), what="the killed processes to go")
    assert proc.returncode == -signal.SIGKILL

    assert deployments(sysroot) == before
    assert scratch_dirs(sysroot), "the kill should have left the compose scratch folder"

    lulayer(sysroot, "install", "htop")
    assert scratch_dirs(sysroot) == []
    deps = deployments(sysroot)
    assert len(deps) == 2 and (deps[0] / "usr/bin/htop").is_file()
    assert "requested=htop;" in origin_of(deps[0])
    fsck(sysroot)
