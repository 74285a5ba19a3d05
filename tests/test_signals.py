"""SIGINT, SIGTERM and SIGHUP, as a person, a dropped ssh session or systemd sends them: one
`interrupted: ...` line, exit 128+N, never a traceback, and what is left is what a SIGKILL at
the same point leaves, recovered by the next command (lulayer/signals.py).

Real CLI subprocesses on real OSTree folder sysroots. The fault points of the SIGKILL tests
(lulayer/faults.py) send the signal instead with LULAYER_TEST_FAULT_SIGNAL; by default each
point gets one signal, rotated over the three, and the full cross product is marked slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from gi.repository import Gio, OSTree

from fixtures import build as fixture_build
from lulayer.apply.live import RESET_STEPS, STEPS
from lulayer.faults import FAULT_ENV, FAULT_SIGNAL_ENV
from lulayer.signals import Stage
from tests.helpers import (
    WITH_HTOP,
    booted,
    commit_of,
    describe,
    leftover_temp_paths,
    lulayer,
    pending,
    repo_of,
    rpm_names,
    spawn_lulayer,
    staged_record,
    wait_for_child,
)
from tests.invariants import Checker, live_state
from tests.test_kills import assert_interrupted_output, random_kills, seed_for

pytestmark = pytest.mark.root

deployments = fixture_build.deployments
wait_unlocked = fixture_build.wait_unlocked

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def rotated(points: tuple[str, ...]) -> list[object]:
    """Each point with one signal, the three in turn: every signal and every point run by default."""
    return [pytest.param(p, SIGNALS[i % len(SIGNALS)], id=f"{p}-{SIGNALS[i % len(SIGNALS)].name}")
            for i, p in enumerate(points)]


def crossed(points: tuple[str, ...]) -> list[object]:
    """The points x signals the rotation leaves out, for the slow run."""
    return [pytest.param(p, s, id=f"{p}-{s.name}", marks=pytest.mark.slow)
            for i, p in enumerate(points) for s in SIGNALS if s != SIGNALS[i % len(SIGNALS)]]


def at(point: str, sig: signal.Signals) -> dict[str, str]:
    return {FAULT_ENV: point, FAULT_SIGNAL_ENV: sig.name.removeprefix("SIG")}


def assert_interrupted(proc: subprocess.CompletedProcess[str], sig: signal.Signals, stage: Stage) -> None:
    """Exit 128+N; stderr's last line, and its only `interrupted:` one, says stage; no traceback."""
    assert proc.returncode == 128 + sig, describe(proc)
    assert_interrupted_output(proc.stderr, describe(proc))
    assert proc.stderr.splitlines()[-1] == f"interrupted: {stage}", describe(proc)


@pytest.mark.parametrize(("step", "sig"), [*rotated(STEPS), *crossed(STEPS)])
def test_signal_mid_live_install_stops_and_next_command_finishes(sysroot: Path, tmp_path: Path, step: str,
                                                                  sig: signal.Signals) -> None:
    out = lulayer(sysroot, "install", "htop", "--live", check=False, env=at(step, sig))

    assert_interrupted(out, sig, Stage.LIVE)
    st = live_state(sysroot)
    assert st is not None and st.get("inprogress"), st
    assert "InterruptedLiveCommit" in lulayer(sysroot, "status").stdout
    assert staged_record(sysroot) is not None, "the next boot's deployment is left recorded, as by SIGKILL"
    lulayer(sysroot, "apply-live")
    Checker(sysroot, tmp_path).check(commit_of(pending(sysroot)), f"{sig.name} at {step}")
    assert rpm_names(booted(sysroot)) == WITH_HTOP


@pytest.mark.parametrize(("step", "sig"), [*rotated(RESET_STEPS), *crossed(RESET_STEPS)])
def test_signal_mid_reset_stops_and_next_command_finishes(sysroot: Path, tmp_path: Path, step: str,
                                                          sig: signal.Signals) -> None:
    lulayer(sysroot, "install", "htop", "--live")

    out = lulayer(sysroot, "apply-live", "--reset", check=False, env=at(step, sig))

    assert_interrupted(out, sig, Stage.RESET)
    lulayer(sysroot, "cleanup", "--repomd")  # any mutating command finishes the reset
    Checker(sysroot, tmp_path).check(commit_of(booted(sysroot)), f"{sig.name} at {step}")


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_signal_inside_commit_callback_stops_after_commit_with_nothing_changed(sysroot: Path, tmp_path: Path,
                                                                                sig: signal.Signals) -> None:
    """A signal inside libostree's commit filter is recorded, never raised there: the callback
    answers as always, the commit is the one a clean run makes, and the command stops after it
    with no ref and no deployment."""
    before = deployments(sysroot)
    repo = OSTree.Repo.new(Gio.File.new_for_path(str(repo_of(sysroot))))
    repo.open(None)
    commits_before = set(_commits(repo))

    out = lulayer(sysroot, "install", "htop", check=False, env=at("commit-filter", sig))

    assert_interrupted(out, sig, Stage.UNCHANGED)
    assert deployments(sysroot) == before
    assert leftover_temp_paths(sysroot) == []
    dangling = set(_commits(repo)) - commits_before
    assert len(dangling) == 1, dangling
    assert not set(repo.list_refs(None, None)[1].values()) & dangling, "the interrupted commit has a ref"

    lulayer(sysroot, "install", "htop")

    made, clean = dangling.pop(), commit_of(pending(sysroot))
    listing = _listing(sysroot, made)
    assert listing == _listing(sysroot, clean), "the callback's answers were lost"
    assert "/usr/bin/htop" in listing and not any(p.startswith(("/var/", "/run/")) for p in listing), listing
    Checker(sysroot, tmp_path).check(commit_of(booted(sysroot)), f"{sig.name} in the commit filter")


def _listing(sysroot: Path, commit: str) -> dict[str, str]:
    """Each path of commit with its type, mode and checksum, but the rpmdb's (rpm writes
    install times into it: it differs between two runs)."""
    out = subprocess.run(["ostree", f"--repo={repo_of(sysroot)}", "ls", "-R", "-C", commit],
                         check=True, capture_output=True, text=True).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split()
        path = fields[-1] if fields[0][0] != "l" else fields[-3]
        if fields[0][0] == "d":  # a folder's contents checksum covers the rpmdb too
            del fields[4]
        if not path.startswith("/usr/share/rpm"):
            entries[path] = " ".join(fields[:-1])
    return entries


def _commits(repo: OSTree.Repo) -> list[str]:
    repo.reload_config(None)  # sees objects written since
    _, objs = repo.list_objects(OSTree.RepoListObjectsFlags.ALL, None)
    return [OSTree.object_name_deserialize(o)[0] for o in objs
            if OSTree.object_name_deserialize(o)[1] == OSTree.ObjectType.COMMIT]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_signal_mid_compose_kills_rpm_child_before_its_scratch_goes(sysroot: Path, tmp_path: Path,
                                                                     sig: signal.Signals) -> None:
    """Sent to the command's process group while the forked rpm child composes (the child leads
    a group of its own, as a terminal's Ctrl-C would miss it): the child is killed and waited
    for, then its scratch folder is removed, and nothing is deployed."""
    before = deployments(sysroot)
    log = tmp_path / "out.log"
    proc = spawn_lulayer(sysroot, ["install", "htop"], log)
    child = wait_for_child(proc, "lulayer-compose")
    os.killpg(proc.pid, sig)
    rc = proc.wait()

    assert_stopped_unchanged(sysroot, tmp_path, rc, log.read_text(), sig, before, child, "mid-compose")


def assert_stopped_unchanged(sysroot: Path, tmp_path: Path, rc: int, text: str, sig: signal.Signals,
                             before: list[Path], child: int, when: str) -> None:
    """The command stopped by sig before it changed anything: exit 128+N, its last line says nothing
    was changed, its helper child (pid child) is gone, nothing deployed, staged or left, the sysroot whole."""
    assert rc == 128 + sig, text
    assert_interrupted_output(text, text)
    assert text.splitlines()[-1] == f"interrupted: {Stage.UNCHANGED}"
    assert not Path(f"/proc/{child}").exists(), "the command's child outlived it"
    assert deployments(sysroot) == before
    assert staged_record(sysroot) is None
    assert leftover_temp_paths(sysroot) == []
    Checker(sysroot, tmp_path).check(commit_of(booted(sysroot)), f"{sig.name} {when}")


@pytest.fixture
def held_lock(sysroot: Path) -> Iterator[None]:
    """The sysroot lock, held by this test process (as another `ostree admin` would hold it)."""
    other = OSTree.Sysroot.new(Gio.File.new_for_path(str(sysroot)))
    other.lock()
    try:
        yield
    finally:
        other.unlock()


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_signals_while_waiting_for_lock_stop_with_nothing_changed(sysroot: Path, tmp_path: Path, held_lock: None,
                                                                  sig: signal.Signals) -> None:
    log = tmp_path / "out.log"
    proc = spawn_lulayer(sysroot, ["install", "htop"], log)
    deadline = time.monotonic() + 60
    while "waiting for the sysroot lock" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    os.killpg(proc.pid, sig)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # a second one (Ctrl-C again) changes nothing

    assert proc.wait(timeout=60) == 128 + sig, log.read_text()
    assert_interrupted_output(log.read_text(), log.read_text())
    assert log.read_text().splitlines()[-1] == f"interrupted: {Stage.UNCHANGED}"
    assert deployments(sysroot) == [booted(sysroot)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_detached_writer_ignores_terminal_signals(sysroot: Path, sig: signal.Signals) -> None:
    """The writer of the staged deployment has left the terminal: Ctrl-C or a hang-up sent as
    it starts does not stop it; the deployment is written."""
    out = lulayer(sysroot, "install", "htop", "--live", env=at("staged-write", sig))

    assert out.returncode == 0, describe(out)
    wait_unlocked(sysroot)
    assert staged_record(sysroot) is None
    assert (pending(sysroot) / "usr/bin/htop").is_file()


def test_detached_writer_stopped_by_sigterm_is_written_by_next_command(sysroot: Path, tmp_path: Path) -> None:
    """SIGTERM (a shutdown) stops the writer: the record stays, and the next command (or
    lulayer-finalize.service at shutdown) writes the deployment."""
    lulayer(sysroot, "install", "htop", "--live", env=at("staged-write", signal.SIGTERM))
    wait_unlocked(sysroot)
    assert staged_record(sysroot) is not None

    out = lulayer(sysroot, "cleanup", "--repomd")

    assert "Wrote the deployment staged for the next boot" in out.stderr, describe(out)
    assert staged_record(sysroot) is None
    Checker(sysroot, tmp_path).check(commit_of(pending(sysroot)), "writer stopped by SIGTERM")


def test_random_signals_quick(sysroot: Path, tmp_path: Path) -> None:
    """A signal that lands after a command's last safe point lets it finish (9 of 9 did, seed
    3225999140): rounds of 9 (seeds SEED, SEED+1, ...) go on, at most 4, until one stopped a command."""
    seed = seed_for("random signals quick")
    for n in range(4):
        scratch = tmp_path / f"round-{n}"
        scratch.mkdir()
        stats = random_kills(sysroot, scratch, 9, seed + n, signals=SIGNALS)
        if stats.killed:
            break
    assert stats.killed >= 1, stats.outcomes


@pytest.mark.slow
def test_random_signals_long(sysroot: Path, tmp_path: Path) -> None:
    seed = seed_for("random signals long")
    stats = random_kills(sysroot, tmp_path, int(os.environ.get("LULAYER_KILL_ITERATIONS", "220")) // 2, seed,
                         signals=SIGNALS)
    print(stats.outcomes)
    assert stats.mid_apply >= 5, "too few signals landed mid-apply to mean anything"
