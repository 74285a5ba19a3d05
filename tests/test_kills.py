"""SIGKILL at random moments of live operations, and inside `apply-live --reset`: nothing lost,
nothing half-applied.

Real CLI subprocesses on real OSTree folder sysroots. After every kill a recovery command runs
and the whole invariant set is checked (tests/invariants.py Checker). The long run is marked
slow (`-m slow`, LULAYER_KILL_ITERATIONS sets its length); a quick one runs by default. Seeds
are printed (pytest -s shows them; a failure shows them too) and can be fixed with
LULAYER_TEST_SEED.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from lulayer.apply.live import RESET_STEPS
from lulayer.faults import FAULT_ENV
from tests.helpers import (
    WITH_HTOP,
    booted,
    commit_of,
    describe,
    leftover_temp_paths,
    lulayer,
    one_error_line,
    pending,
    repo_of,
    rpm_names,
    spawn_lulayer,
    staged_record,
    wait_unlocked,
)
from tests.invariants import Checker, live_commit, live_in_progress, live_state, requested

pytestmark = pytest.mark.root

COMPOSE_SCRATCH_PREFIX = "lulayer-compose-"  # a compose's scratch folder in the repository's tmp
# What the next command says when an install killed while its packages were live ahead of their commit is taken back.
TAKE_BACK_LINE = "Taking back the packages an interrupted install made live ahead of its deployment"


def seed_for(name: str) -> int:
    """The run's seed: LULAYER_TEST_SEED, else a fresh one; printed either way."""
    seed = int(os.environ.get("LULAYER_TEST_SEED") or (time.time_ns() & 0xFFFFFFFF))
    print(f"{name}: seed {seed} (rerun with LULAYER_TEST_SEED={seed})")
    return seed


@dataclass
class KillStats:
    iterations: int = 0
    killed: int = 0
    finished: int = 0
    mid_apply: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


def random_kills(sysroot: Path, scratch: Path, iterations: int, seed: int, *, reboot_every: int = 0,
                 signals: Sequence[signal.Signals] = (signal.SIGKILL,)) -> KillStats:
    """Run live operations under a signal (one of signals, picked at random) at random moments;
    recover and check after each. SIGKILL kills; INT, TERM and HUP (sent to the process group,
    as a terminal or systemd sends them) must stop the command with one `interrupted:` line and
    exit 128+N, or let it finish."""
    rng = random.Random(seed)
    checker = Checker(sysroot, scratch)
    stats = KillStats()
    durations: dict[str, float] = {}  # how long each operation runs, and its live apply
    windows: dict[str, float] = {}
    log = scratch / "op.log"
    for i in range(iterations):
        if reboot_every and i and i % reboot_every == 0:
            fixture_build.reboot(sysroot)
            stats.outcomes["reboot"] += 1
        nxt = pending(sysroot)
        has_htop = "htop" in requested(nxt)
        roll = rng.random()
        if roll < 0.2:
            # A pending deployment made without --live, then apply-live is killed.
            lulayer(sysroot, "uninstall" if has_htop else "install", "htop")
            op = ["apply-live", "--allow-replacement"]
        elif roll < 0.3:
            op = ["apply-live", "--reset"]
        else:
            op = ["uninstall" if has_htop else "install", "htop", "--live"]
        name = op[0] + (" --reset" if "--reset" in op else "")
        before_live = live_commit(sysroot)
        # Half the kills come at a random moment of the whole run; the other half at a random
        # moment after the live apply has begun ("in progress" recorded), which is otherwise a
        # small part of the run.
        aim = rng.random() < 0.5
        proc = spawn_lulayer(sysroot, op, log)
        start = time.monotonic()
        marked = None
        if aim:
            while proc.poll() is None and not live_in_progress(sysroot) and time.monotonic() - start < 60:
                time.sleep(0.001)
            marked = time.monotonic() if proc.poll() is None else None
            delay = rng.uniform(0, windows.get(name, 0.1)) if marked else 0.0
        else:
            delay = rng.uniform(0, 1.1 * durations.get(name, 0.7))
        time.sleep(delay)
        sig = rng.choice(signals) if len(signals) > 1 else signals[0]  # the SIGKILL runs' seeds stay as they were
        with contextlib.suppress(ProcessLookupError):  # it may have finished: nothing to kill
            os.killpg(proc.pid, sig)
        rc = proc.wait()
        stats.iterations += 1
        st = live_state(sysroot)
        # A signal while the interpreter imports site, before lulayer runs at all, is a fatal
        # error of Python's own (exit 1), with nothing changed: README, known limits.
        startup = sig != signal.SIGKILL and rc == 1 and "Fatal Python error: init_import_site" in log.read_text()
        stopped = rc == -sig or (sig != signal.SIGKILL and rc == 128 + sig) or startup
        if stopped and rc > 0 and not startup:
            assert_interrupted_output(log.read_text(), f"iteration {i} (seed {seed}): {' '.join(op)}, {sig.name}")
        elif stopped and sig != signal.SIGKILL:  # in the interpreter's start-up, before lulayer's handlers
            stats.outcomes[f"{sig.name} during the interpreter's start-up"] += 1
        if stopped:
            stats.killed += 1
            if st and st.get("inprogress"):
                stats.mid_apply += 1
                where = "mid-apply"
            elif st and st.get("ahead"):
                where = "ahead of the commit"
            elif live_commit(sysroot) != before_live:
                where = "after-apply"
            else:
                where = "before-apply"
            stats.outcomes[f"{name}: killed {where}"] += 1
        else:
            assert rc == 0, f"iteration {i}: {op} failed:\n{log.read_text()}"
            if marked is not None:
                windows[name] = max(0.02, time.monotonic() - marked)
            else:
                durations[name] = time.monotonic() - start
            stats.finished += 1
            stats.outcomes[f"{name}: finished"] += 1
        # Recovery: the next command. apply-live finishes an interrupted update and applies
        # the pending deployment; --reset drops the overlay; any other mutating command
        # (here cleanup --repomd) finishes an interrupted update and changes nothing live.
        inprogress = str(st["inprogress"]) if st and st.get("inprogress") else None
        live_now = live_commit(sysroot)
        r = rng.random()
        context = (f"iteration {i} (seed {seed}): {' '.join(op)} killed {delay:.3f}s after "
                   f"{'the mark' if aim else 'the start'}, rc {rc}")
        if r < 0.6:
            wait_unlocked(sysroot)  # a detached writer of the killed command's staged deployment
            has_pending = (staged_record(sysroot) is not None
                           or not fixture_build.deployments(sysroot)[0].samefile(booted(sysroot)))
            out = lulayer(sysroot, "apply-live", "--allow-replacement", check=False)
            if has_pending:
                assert out.returncode == 0, f"{context}\n{describe(out)}"
                expect = commit_of(pending(sysroot))
            else:
                if st and st.get("ahead") and not inprogress:  # the recovery's line comes first
                    said, _, rest = out.stderr.partition("\n")
                    assert said == TAKE_BACK_LINE, f"{context}\n{describe(out)}"
                    out = subprocess.CompletedProcess(out.args, out.returncode, out.stdout, rest)
                one_error_line(out, "there is no pending deployment to apply")
                expect = inprogress or live_now
            stats.outcomes["recovered by apply-live"] += 1
        elif r < 0.8:
            out = lulayer(sysroot, "apply-live", "--reset", check=False)
            assert out.returncode == 0, f"{context}\n{describe(out)}"
            expect = commit_of(booted(sysroot))
            stats.outcomes["recovered by apply-live --reset"] += 1
        else:
            out = lulayer(sysroot, "cleanup", "--repomd", check=False)
            assert out.returncode == 0, f"{context}\n{describe(out)}"
            expect = inprogress or live_now
            stats.outcomes["recovered by cleanup --repomd"] += 1
        checker.check(expect, f"{context}; recovery {' '.join(str(a) for a in out.args[4:])}")
    return stats


def assert_interrupted_output(output: str, context: str) -> None:
    """What a command stopped by INT, TERM or HUP prints last: one `interrupted: ...` line, and
    never a traceback or an error line."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("interrupted: "), f"{context}:\n{output}"
    assert sum(line.startswith("interrupted: ") for line in lines) == 1, f"{context}:\n{output}"
    assert not any(line.startswith(("Traceback", "error: ", "Aborted")) for line in lines), f"{context}:\n{output}"


def _report_kills(stats: KillStats, seed: int) -> None:
    print(f"random kills (seed {seed}): {stats.iterations} iterations, {stats.killed} killed, "
          f"{stats.mid_apply} killed mid-apply, {stats.finished} finished before the kill")
    for what, n in sorted(stats.outcomes.items()):
        print(f"  {n:4d}  {what}")


def assert_nothing_left_once_a_layering_command_ran(sysroot: Path) -> None:
    """What the kills may leave in the sysroot: only a killed compose's scratch folder, which
    apply-live and --reset (they do not compose) leave for the next layering command to clean
    (layering.compose.clean_stale_scratch). After one, nothing at all is left."""
    scratch = repo_of(sysroot) / "tmp"
    left = leftover_temp_paths(sysroot)
    assert all(Path(p).parent == scratch and Path(p).name.startswith(COMPOSE_SCRATCH_PREFIX) for p in left), left

    lulayer(sysroot, "install", "hello-config")  # never requested by random_kills: it composes

    assert leftover_temp_paths(sysroot) == []


def test_random_kills_quick(sysroot: Path, tmp_path: Path) -> None:
    seed = seed_for("random kills quick")
    stats = random_kills(sysroot, tmp_path, 12, seed)
    _report_kills(stats, seed)
    assert stats.killed >= 1
    assert_nothing_left_once_a_layering_command_ran(sysroot)


@pytest.mark.slow
def test_random_kills_long(sysroot: Path, tmp_path: Path) -> None:
    seed = seed_for("random kills long")
    stats = random_kills(sysroot, tmp_path, int(os.environ.get("LULAYER_KILL_ITERATIONS", "220")), seed,
                         reboot_every=60)
    _report_kills(stats, seed)
    assert stats.iterations >= 200
    assert stats.mid_apply >= 10, "too few kills landed mid-apply to mean anything"
    assert_nothing_left_once_a_layering_command_ran(sysroot)


@pytest.mark.parametrize("step", RESET_STEPS)
def test_reset_killed_at_each_step_is_finished_by_next_command(sysroot: Path, tmp_path: Path, step: str) -> None:
    """A reset killed after it unmounted the overlay must not leave a state that claims the
    old live commit: the next apply would see nothing to do (or diff from the wrong tree)."""
    live = booted(sysroot)
    lulayer(sysroot, "install", "htop", "--live")
    lulayer(sysroot, "install", "hello-config")  # a pending deployment beyond the live one
    killed = lulayer(sysroot, "apply-live", "--reset", check=False, env={FAULT_ENV: step})
    assert killed.returncode == -signal.SIGKILL, describe(killed)

    out = lulayer(sysroot, "apply-live")

    checker = Checker(sysroot, tmp_path)
    checker.check(commit_of(pending(sysroot)), f"reset killed at {step}, then {describe(out)}")
    assert rpm_names(live) == WITH_HTOP | {"hello-config"}
