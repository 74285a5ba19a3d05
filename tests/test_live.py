"""Live apply, end to end: the real CLI on real OSTree folder sysroots.

The booted deployment's folder is the live root: `install --live` mounts a
transient overlay on its /usr and makes that /usr the new deployment's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from lulayer.apply.live import AHEAD_STEPS, STEPS, apply_live, check_live
from lulayer.faults import FAULT_ENV, FAULT_SIGNAL_ENV
from lulayer.signals import Stage
from lulayer.sysroot import Sysroot
from tests.helpers import (
    BASE,
    DBPATH,
    RPMDB_RUNTIME_FILES,
    WITH_HTOP,
    assert_htop_runs,
    booted,
    checkout_subpath,
    chroot,
    commit_of,
    describe,
    fstype_at,
    lulayer,
    next_commit,
    one_error_line,
    ostree_fsck,
    pending,
    point_repo_file,
    repo_of,
    rpm,
    rpm_names,
    spawn_lulayer,
    staged_record,
    temp_files_under,
    tree_diff,
    tree_entries,
)
from tests.invariants import live_commit

pytestmark = pytest.mark.root


def assert_usr_is_commit(sysroot: Path, live: Path, commit: str, scratch: Path) -> None:
    """The live /usr holds exactly COMMIT's /usr: same paths, types, modes, owners, contents."""
    expected = tree_entries(checkout_subpath(sysroot, commit, "/usr", scratch), ignore_names=RPMDB_RUNTIME_FILES)
    got = tree_entries(live / "usr", ignore_names=RPMDB_RUNTIME_FILES)
    diff = tree_diff(expected, got)
    assert not diff, "\n".join(diff[:40])


def assert_not_found(ran: subprocess.CompletedProcess[str]) -> None:
    """chroot(8) could not find the command (exit 127), rather than failing some other way."""
    assert ran.returncode == 127 and "No such file or directory" in ran.stderr, describe(ran)


def _status_deployments(sysroot: Path) -> list[dict[str, object]]:
    deps: list[dict[str, object]] = json.loads(lulayer(sysroot, "status", "--json").stdout)["deployments"]
    return deps


# --------------------------------------------------------------------------- install, uninstall


def test_install_live_runs_htop_now_and_after_reboot(sysroot: Path) -> None:
    live = booted(sysroot)
    assert_not_found(chroot(live, "htop"))

    lulayer(sysroot, "install", "htop", "--live")

    assert_htop_runs(live)
    assert rpm(live, "-q", "htop", "ncurses-libs").returncode == 0
    assert rpm_names(live) == WITH_HTOP
    nxt = pending(sysroot)
    assert nxt != live
    assert (nxt / "usr/bin/htop").is_file()
    assert rpm_names(nxt) == WITH_HTOP

    new_booted = fixture_build.reboot(sysroot)
    assert new_booted == nxt == booted(sysroot)
    assert fstype_at(live / "usr") is None and fstype_at(new_booted / "usr") is None
    assert_htop_runs(new_booted)
    assert rpm(new_booted, "-q", "htop").returncode == 0
    status = lulayer(sysroot, "status").stdout
    assert "LiveCommit" not in status
    ostree_fsck(sysroot)


def test_live_apply_leaves_booted_checkout_untouched(sysroot: Path) -> None:
    live = booted(sysroot)
    before = tree_entries(live, with_inodes=True)

    lulayer(sysroot, "install", "htop", "--live")
    assert chroot(live, "htop").returncode == 0
    assert fstype_at(live / "usr") == "overlay"

    subprocess.run(["umount", "-l", str(live / "usr")], check=True)
    assert fstype_at(live / "usr") is None
    after = tree_entries(live, with_inodes=True)
    diff = tree_diff(before, after)
    assert not diff, "\n".join(diff[:40])
    assert not (live / "usr/bin/htop").exists()
    ostree_fsck(sysroot)


def test_live_usr_stays_read_only_to_other_processes(sysroot: Path) -> None:
    live = booted(sysroot)
    lulayer(sysroot, "install", "htop", "--live")
    touched = subprocess.run(["touch", str(live / "usr/x")], capture_output=True, text=True)
    assert touched.returncode != 0
    assert "Read-only file system" in touched.stderr
    assert not (live / "usr/x").exists()


def test_uninstall_live_removes_htop_now_and_from_next_boot(sysroot: Path) -> None:
    live = booted(sysroot)
    lulayer(sysroot, "install", "htop", "--live")
    assert chroot(live, "htop").returncode == 0

    out = lulayer(sysroot, "uninstall", "htop", "--live")

    assert "Live removed: htop-3.3.0-1.fc41.x86_64" in out.stdout, describe(out)
    assert_not_found(chroot(live, "htop"))
    assert rpm(live, "-q", "htop").stdout == "package htop is not installed\n"
    assert not (live / "usr/bin/htop").exists()
    assert rpm_names(live) == BASE
    nxt = pending(sysroot)
    assert not (nxt / "usr/bin/htop").exists()
    assert rpm_names(nxt) == BASE
    ostree_fsck(sysroot)


def test_second_live_install_composes_from_booted_commit_not_live_usr(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    lulayer(sysroot, "install", "htop", "--live")

    lulayer(sysroot, "install", "hello-config", "--live")

    nxt = pending(sysroot)
    assert rpm_names(nxt) == WITH_HTOP | {"hello-config"}
    assert rpm_names(live) == WITH_HTOP | {"hello-config"}
    assert_usr_is_commit(sysroot, live, commit_of(nxt), tmp_path / "target-usr")
    assert chroot(live, "htop").stdout.strip() == "htop 3.3.0"
    ostree_fsck(sysroot)


def test_a_checked_live_plan_is_worked_out_again_once_the_live_state_moved(sysroot: Path, tmp_path: Path) -> None:
    # check_live's plan goes with the live state it saw: once the live /usr has moved on,
    # apply_live must diff from where it is now, not reuse the plan.
    live = booted(sysroot)
    lulayer(sysroot, "install", "htop")
    htop_commit = commit_of(pending(sysroot))
    plan = check_live(Sysroot(sysroot), htop_commit)
    assert plan is not None
    lulayer(sysroot, "install", "hello-config", "--live")
    assert rpm_names(live) == WITH_HTOP | {"hello-config"}

    apply_live(Sysroot(sysroot), htop_commit, allow_removal=True, checked=plan)

    assert rpm_names(live) == WITH_HTOP
    assert_usr_is_commit(sysroot, live, htop_commit, tmp_path / "target-usr")
    ostree_fsck(sysroot)


# --------------------------------------------------------------------------- replacement


def test_upgrade_live_needs_allow_replacement(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    lulayer(sysroot, "install", "upgrademe", "--live")
    assert chroot(live, "upgrademe").stdout.strip() == "upgrademe 1.0"
    repo = fixture_build.make_repo(tmp_path / "repo", [*fixture_build.default_repo_packages(),
                                                      fixture_build.rpm_path("upgrademe", "2.0")])
    point_repo_file(live, repo)
    before = tree_entries(live / "usr", ignore_names=RPMDB_RUNTIME_FILES)

    refused = lulayer(sysroot, "upgrade", "--live", check=False)

    one_error_line(refused, "packages would be replaced: upgrademe-1.0-1.fc41.x86_64 -> upgrademe-2.0-1.fc41.x86_64",
                   "pass --allow-replacement to apply it live")
    assert tree_entries(live / "usr", ignore_names=RPMDB_RUNTIME_FILES) == before
    assert chroot(live, "upgrademe").stdout.strip() == "upgrademe 1.0"
    (b,) = [d for d in _status_deployments(sysroot) if d["booted"]]
    assert "live-inprogress" not in b
    assert b["lulayer-live-replaced-files"] is False, "installing upgrademe 1.0 live only added files"
    live_before = b["live-replaced"]  # rpm-ostree's name for the live commit, files replaced or not

    lulayer(sysroot, "upgrade", "--live", "--allow-replacement")

    assert chroot(live, "upgrademe").stdout.strip() == "upgrademe 2.0"
    assert not (live / "usr/share/upgrademe/only-in-1").exists()
    assert (live / "usr/share/upgrademe/new-in-2").read_text() == "new in upgrademe 2.0\n"
    assert rpm(live, "-q", "--qf", "%{VERSION}", "upgrademe").stdout == "2.0"
    assert (pending(sysroot) / "usr/share/upgrademe/new-in-2").is_file()
    (b,) = [d for d in _status_deployments(sysroot) if d["booted"]]
    assert b["live-replaced"] == commit_of(pending(sysroot)) != live_before
    assert b["lulayer-live-replaced-files"] is True, "upgrademe's files were replaced and removed live"
    assert "live-inprogress" not in b
    ostree_fsck(sysroot)


# --------------------------------------------------------------------------- reset


def test_apply_live_reset_returns_to_booted_set_and_keeps_pending(sysroot: Path) -> None:
    live = booted(sysroot)
    lulayer(sysroot, "install", "htop", "--live")
    assert chroot(live, "htop").returncode == 0

    lulayer(sysroot, "apply-live", "--reset")

    assert_not_found(chroot(live, "htop"))
    assert not (live / "usr/bin/htop").exists()
    assert rpm_names(live) == BASE
    assert fstype_at(live / "usr") is None
    assert (pending(sysroot) / "usr/bin/htop").is_file()
    assert "LiveCommit" not in lulayer(sysroot, "status").stdout
    ostree_fsck(sysroot)


# --------------------------------------------------------------------------- interruption


def _install_htop_live_killed_at(sysroot: Path, step: str) -> None:
    """`install htop --live`, SIGKILLed at the fault point step."""
    killed = lulayer(sysroot, "install", "htop", "--live", check=False, env={FAULT_ENV: step})
    assert killed.returncode == -9, describe(killed)


@pytest.mark.parametrize("step", STEPS)
def test_interrupted_live_install_is_finished_by_next_command(sysroot: Path, tmp_path: Path, step: str) -> None:
    live = booted(sysroot)
    _install_htop_live_killed_at(sysroot, step)

    assert lulayer(sysroot, "status", check=False).returncode == 0
    lulayer(sysroot, "apply-live")

    target = commit_of(pending(sysroot))
    assert target != commit_of(live)
    assert_usr_is_commit(sysroot, live, target, tmp_path / "target-usr")
    db = live / DBPATH.lstrip("/")
    assert not (db.parent / (db.name + ".new")).exists()
    assert temp_files_under(live / "usr") == []
    assert rpm_names(live) == WITH_HTOP
    assert_htop_runs(live)
    assert (pending(sysroot) / "usr/bin/htop").is_file()
    ostree_fsck(sysroot)


def test_interrupted_live_update_is_finished_by_another_mutating_command(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    _install_htop_live_killed_at(sysroot, "files-half")
    target = next_commit(sysroot)

    out = lulayer(sysroot, "install", "hello-config")

    assert "interrupted live update" in out.stderr
    assert_usr_is_commit(sysroot, live, target, tmp_path / "target-usr")
    assert rpm_names(live) == WITH_HTOP
    assert (pending(sysroot) / "usr/bin/hello-config").is_file()
    assert not (live / "usr/bin/hello-config").exists()
    ostree_fsck(sysroot)


@pytest.mark.parametrize("step", STEPS)
def test_reset_after_interrupted_live_install_returns_to_booted_commit(sysroot: Path, tmp_path: Path,
                                                                       step: str) -> None:
    live = booted(sysroot)
    _install_htop_live_killed_at(sysroot, step)

    lulayer(sysroot, "apply-live", "--reset")

    assert fstype_at(live / "usr") is None
    assert_usr_is_commit(sysroot, live, commit_of(live), tmp_path / "booted-usr")
    assert rpm_names(live) == BASE
    assert (pending(sysroot) / "usr/bin/htop").is_file()
    assert "LiveCommit" not in lulayer(sysroot, "status").stdout
    ostree_fsck(sysroot)


# --------------------------------------------------------------------------- ahead of the commit


def _stopped_at(sysroot: Path, step: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """`lulayer ARGS` started and stopped (SIGSTOP) at fault point step; the caller continues it."""
    proc = spawn_lulayer(sysroot, args, log, env={FAULT_ENV: step, FAULT_SIGNAL_ENV: "STOP"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state == "T":
            return proc
        assert proc.poll() is None, f"{args} ended without reaching {step}:\n{log.read_text()}"
        time.sleep(0.01)
    raise AssertionError(f"{args} did not reach {step}")


def _ended_with_its_commit_live(sysroot: Path, proc: subprocess.Popen[bytes], live: Path, tmp_path: Path) -> None:
    """The install _stopped_at stopped, continued by the caller, ends well: the live /usr is then its
    pending commit's."""
    assert proc.wait() == 0, (tmp_path / "log").read_text()
    target = next_commit(sysroot)
    assert live_commit(sysroot) == target
    assert_usr_is_commit(sysroot, live, target, tmp_path / "target-usr")


def _commit_objects(sysroot: Path) -> set[str]:
    return {p.name for p in (repo_of(sysroot) / "objects").glob("*/*.commit")}


def test_install_live_runs_the_package_before_its_commit_is_written(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    commits = _commit_objects(sysroot)
    proc = _stopped_at(sysroot, "ahead-mounted", tmp_path / "log", "install", "htop", "--live")
    try:
        assert_htop_runs(live)
        assert rpm_names(live) == WITH_HTOP
        assert _commit_objects(sysroot) == commits, "the new commit is written after the package went live"
        assert pending(sysroot) == live and staged_record(sysroot) is None
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _ended_with_its_commit_live(sysroot, proc, live, tmp_path)

    layer = next(sysroot.glob("ostree/deploy/*/backing/*/lulayer-live/layer"))
    obj = repo_of(sysroot) / "objects"
    htop = (layer / "bin/htop").stat()
    linked = [o for o in obj.glob("*/*.file") if o.lstat().st_ino == htop.st_ino]
    assert linked, "the file rpm wrote is the commit's object, and the one the live /usr shows"
    ostree_fsck(sysroot)


def test_install_live_ahead_links_only_what_the_booted_usr_lacks(sysroot: Path, tmp_path: Path) -> None:
    """With a package layered already (hello-config, booted), the compose installs it again; the
    layer that goes live ahead of the commit holds only htop's files and the rpmdb."""
    lulayer(sysroot, "install", "hello-config")
    live = fixture_build.reboot(sysroot)
    proc = _stopped_at(sysroot, "ahead-mounted", tmp_path / "log", "install", "htop", "--live")
    os.kill(proc.pid, signal.SIGCONT)
    _ended_with_its_commit_live(sysroot, proc, live, tmp_path)

    layer = next(sysroot.glob("ostree/deploy/*/backing/*/lulayer-live/layer"))
    held = {str(p.relative_to(layer)) for p in layer.rglob("*") if not p.is_dir()}
    assert "bin/htop" in held and not any("hello" in p for p in held), sorted(held)
    assert rpm_names(live) == WITH_HTOP | {"hello-config"}
    ostree_fsck(sysroot)


@pytest.mark.parametrize("damage", ["a file gone", "a folder the commit lacks"])
def test_a_layer_live_ahead_that_is_not_the_commits_is_replaced_by_one_made_from_the_commit(
        sysroot: Path, tmp_path: Path, damage: str) -> None:
    live = booted(sysroot)
    proc = _stopped_at(sysroot, "ahead-mounted", tmp_path / "log", "install", "htop", "--live")
    try:
        layer = next(sysroot.glob("ostree/deploy/*/backing/*/lulayer-live/layer"))
        if damage == "a file gone":
            (layer / "bin/htop").unlink()
        else:
            (layer / "share/not-in-the-commit").mkdir()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _ended_with_its_commit_live(sysroot, proc, live, tmp_path)
    assert_htop_runs(live)
    ostree_fsck(sysroot)


@pytest.mark.parametrize("step", AHEAD_STEPS)
def test_install_live_killed_ahead_of_its_commit_is_taken_back_by_next_command(sysroot: Path, tmp_path: Path,
                                                                              step: str) -> None:
    live = booted(sysroot)
    _install_htop_live_killed_at(sysroot, step)
    assert lulayer(sysroot, "status", check=False).returncode == 0

    out = lulayer(sysroot, "cleanup", "--repomd")

    assert "Taking back the packages an interrupted install made live" in out.stderr, describe(out)
    assert fstype_at(live / "usr") is None
    assert_usr_is_commit(sysroot, live, commit_of(live), tmp_path / "booted-usr")
    assert rpm_names(live) == BASE
    assert pending(sysroot) == live and staged_record(sysroot) is None
    assert "LiveCommit" not in lulayer(sysroot, "status").stdout
    assert not list(sysroot.glob("ostree/deploy/*/backing/*/lulayer-live"))
    ostree_fsck(sysroot)

    lulayer(sysroot, "install", "htop", "--live")
    assert chroot(live, "htop").returncode == 0


def test_install_live_interrupted_ahead_of_its_commit_says_so(sysroot: Path) -> None:
    live = booted(sysroot)
    out = lulayer(sysroot, "install", "htop", "--live", check=False,
                  env={FAULT_ENV: "ahead-mounted", FAULT_SIGNAL_ENV: "INT"})

    assert out.returncode == 128 + signal.SIGINT, describe(out)
    assert out.stderr.strip().splitlines()[-1] == f"interrupted: {Stage.LIVE_AHEAD}", describe(out)
    lulayer(sysroot, "apply-live", "--reset")
    assert fstype_at(live / "usr") is None and rpm_names(live) == BASE


# --------------------------------------------------------------------------- concurrent readers


def test_rpm_readers_see_old_or_new_package_set_never_a_mix(sysroot: Path) -> None:
    live = booted(sysroot)
    old, new = BASE, WITH_HTOP
    results: list[tuple[int, frozenset[str], str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            p = subprocess.run(["rpm", "--root", str(live), "--dbpath", DBPATH, "-qa", "--qf", "%{NAME}\n"],
                               capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
            results.append((p.returncode, frozenset(p.stdout.split()), p.stderr))

    t = threading.Thread(target=reader)
    t.start()
    try:
        lulayer(sysroot, "install", "htop", "--live")
        lulayer(sysroot, "uninstall", "htop", "--live")
    finally:
        stop.set()
        t.join()

    assert len(results) >= 20
    assert {r[1] for r in results} == {frozenset(old), frozenset(new)}, "the reader saw only one state"
    bad = [r for r in results if r[0] != 0 or r[2] or r[1] not in (old, new)]
    assert not bad, bad[:5]


# --------------------------------------------------------------------------- /etc and units


def test_install_live_adds_config_file_to_live_etc(sysroot: Path) -> None:
    live = booted(sysroot)
    out = lulayer(sysroot, "install", "hello-config", "--live")
    conf = live / "etc/hello/hello.conf"
    assert conf.read_text().startswith("# hello.conf (lulayer fixture)")
    assert (live / "etc/hello/defaults.conf").is_file()
    assert "/etc/hello/hello.conf" in out.stdout
    ran = chroot(live, "hello-config")
    assert ran.returncode == 0 and "greeting=hello" in ran.stdout, describe(ran)


def test_install_live_keeps_admins_modified_config(sysroot: Path) -> None:
    live = booted(sysroot)
    conf = live / "etc/hello/hello.conf"
    conf.parent.mkdir()
    conf.write_text("greeting=mine\n")

    lulayer(sysroot, "install", "hello-config", "--live")

    assert conf.read_text() == "greeting=mine\n"
    assert (live / "etc/hello/defaults.conf").is_file()
    assert "greeting=mine" in chroot(live, "hello-config").stdout
    assert (pending(sysroot) / "etc/hello/hello.conf").read_text() == "greeting=mine\n"


def test_install_live_names_new_systemd_unit(sysroot: Path) -> None:
    live = booted(sysroot)
    out = lulayer(sysroot, "install", "hello-service", "--live")
    assert "hello.service" in out.stdout
    unit = live / "usr/lib/systemd/system/hello.service"
    assert "ExecStart=/usr/bin/hello-daemon" in unit.read_text()
    ran = chroot(live, "hello-daemon", "--once")
    assert ran.returncode == 0 and "hello-daemon 1.0 started" in ran.stdout


# --------------------------------------------------------------------------- refusals, status


def test_apply_live_without_pending_deployment_is_refused_and_changes_nothing(sysroot: Path) -> None:
    live = booted(sysroot)
    before = tree_entries(sysroot, with_inodes=True)

    refused = lulayer(sysroot, "apply-live", check=False)

    one_error_line(refused, "there is no pending deployment to apply")
    assert fstype_at(live / "usr") is None
    assert tree_diff(before, tree_entries(sysroot, with_inodes=True)) == []


def test_status_shows_live_state_after_install_live(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop", "--live")
    text = lulayer(sysroot, "status").stdout
    assert "LiveCommit" in text and "LiveDiff" in text
    deps = json.loads(lulayer(sysroot, "status", "--json").stdout)["deployments"]
    (b,) = [d for d in deps if d["booted"]]
    assert "live-inprogress" not in b  # unset keys are left out, as rpm-ostree does
    assert b["live-replaced"] == commit_of(pending(sysroot))


def _live_refs(sysroot: Path) -> set[str]:
    out = subprocess.run(["ostree", f"--repo={repo_of(sysroot)}", "refs"], check=True, capture_output=True,
                         text=True).stdout.split()
    return {r for r in out if r.startswith("lulayer/live")}


def test_live_commit_is_held_by_a_ref_of_its_own_and_survives_a_prune(sysroot: Path) -> None:
    # An earlier version's refs, one per role, are dropped by the next state written.
    subprocess.run(["ostree", f"--repo={repo_of(sysroot)}", "refs", "--create=lulayer/live-apply",
                    commit_of(booted(sysroot))], check=True)
    lulayer(sysroot, "install", "htop", "--live")
    live = live_commit(sysroot)
    assert live != commit_of(booted(sysroot))
    assert _live_refs(sysroot) == {f"lulayer/live-commit/{live}"}
    # The pending deployment goes; the live commit must stay for the live /usr and a later --reset.
    lulayer(sysroot, "cleanup", "--pending")
    subprocess.run(["ostree", f"--repo={repo_of(sysroot)}", "prune", "--refs-only"], check=True)
    lulayer(sysroot, "apply-live", "--reset")
    assert _live_refs(sysroot) == set()
    ostree_fsck(sysroot)
