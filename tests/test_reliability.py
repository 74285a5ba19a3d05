"""Reliability under faults, load and hostile input: nothing lost, nothing half-applied.

Real CLI subprocesses on real OSTree folder sysroots, as in test_live.py: SIGKILL at random
moments, file systems that fill up, rpm readers racing every live operation, a soak of
install/uninstall cycles, hostile packages and origins, and signatures. The hostile RPMs are
built from fixtures/specs/hostile/ (kept out of the default repository) into a repository of
their own. The long variants are marked slow (`-m slow`); a quick variant of each runs by
default. Seeds are printed (pytest -s shows them; a failure shows them too) and can be fixed
with LULAYER_TEST_SEED.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from lulayer.apply.live import RESET_STEPS
from lulayer.faults import FAULT_ENV
from lulayer.mounts import mounts as mount_table
from tests.helpers import (
    BASE,
    DBPATH,
    RPMDB_RUNTIME_FILES,
    WITH_HTOP,
    booted,
    build_spec_dir,
    checkout_subpath,
    cli_argv,
    commit_of,
    describe,
    fstype_at,
    leftover_temp_paths,
    lulayer,
    one_error_line,
    ostree_fsck,
    pending,
    point_repo_file,
    repo_of,
    rpm,
    rpm_names,
    run,
    staged_record,
    tree_diff,
    tree_entries,
    wait_unlocked,
)

pytestmark = pytest.mark.root

TOP = Path(__file__).resolve().parent.parent
HOSTILE_SPECS = TOP / "fixtures" / "specs" / "hostile"
STATE_FILE = "lulayer-live.json"


def seed_for(name: str) -> int:
    """The run's seed: LULAYER_TEST_SEED, else a fresh one; printed either way."""
    seed = int(os.environ.get("LULAYER_TEST_SEED") or (time.time_ns() & 0xFFFFFFFF))
    print(f"{name}: seed {seed} (rerun with LULAYER_TEST_SEED={seed})")
    return seed


# --------------------------------------------------------------------------- shared checks


def live_state(sysroot: Path) -> dict[str, object] | None:
    """The booted deployment's live state file, or None when there is none."""
    f = sysroot / "run/ostree/deployment-state" / booted(sysroot).name / STATE_FILE
    try:
        data: dict[str, object] = json.loads(f.read_text())
    except FileNotFoundError:
        return None
    return data


def _inprogress(sysroot: Path) -> bool:
    try:
        st = live_state(sysroot)
    except ValueError:  # never half-written (written beside and renamed), but be safe
        return False
    return bool(st and st.get("inprogress"))


def live_commit(sysroot: Path) -> str:
    """What the live /usr holds according to the state file (the booted commit without one)."""
    st = live_state(sysroot)
    return str(st["commit"]) if st and st.get("commit") else commit_of(booted(sysroot))


def requested(deployment: Path) -> set[str]:
    """The packages the deployment's .origin requests."""
    origin = Path(f"{deployment}.origin").read_text()
    for line in origin.splitlines():
        if line.startswith("requested="):
            return {p for p in line.split("=", 1)[1].split(";") if p}
    return set()


def backing_dir(sysroot: Path) -> Path:
    b = booted(sysroot)
    return sysroot / "ostree/deploy" / fixture_build.OSNAME / "backing" / b.name / "lulayer-live"


def objects_count(sysroot: Path) -> int:
    return sum(len(files) for _d, _s, files in os.walk(repo_of(sysroot) / "objects"))


def mounts_under(path: Path) -> list[Path]:
    """Mount points strictly under path."""
    top = Path(os.path.realpath(path))
    return [m.mountpoint for m in mount_table() if top in m.mountpoint.parents]


def usr_entries(root: Path) -> dict[str, object]:
    return dict(tree_entries(root, ignore_names=RPMDB_RUNTIME_FILES))


def commit_rpm_names(sysroot: Path, commit: str, scratch: Path) -> set[str]:
    """The package names in COMMIT's rpmdb, read by rpm from a copy (never the repository's
    hardlinked objects)."""
    dest = checkout_subpath(sysroot, commit, DBPATH, scratch / f"rpmdb-{commit[:12]}")
    root = scratch / f"rpmroot-{commit[:12]}"
    shutil.copytree(dest, root / DBPATH.lstrip("/"))
    try:
        return rpm_names(root)
    finally:
        fixture_build.remove_sysroot(dest)
        fixture_build.remove_sysroot(root)


@dataclass
class Checker:
    """Asserts the whole invariant set of a sysroot against the commits it should show."""

    sysroot: Path
    scratch: Path
    _cache: dict[str, dict[str, object]] | None = None
    _pkgs: dict[str, frozenset[str]] | None = None
    n: int = 0

    def commit_usr(self, commit: str) -> dict[str, object]:
        if self._cache is None:
            self._cache = {}
        if commit not in self._cache:
            self.n += 1
            dest = checkout_subpath(self.sysroot, commit, "/usr", self.scratch / f"usr-{self.n}")
            self._cache[commit] = usr_entries(dest)
            fixture_build.remove_sysroot(dest)
        return self._cache[commit]

    def packages_of(self, commit: str) -> frozenset[str]:
        if self._pkgs is None:
            self._pkgs = {}
        if commit not in self._pkgs:
            self._pkgs[commit] = frozenset(commit_rpm_names(self.sysroot, commit, self.scratch))
        return self._pkgs[commit]

    def check(self, expect_live: str, context: str = "") -> None:
        sysroot = self.sysroot
        live = booted(sysroot)
        # The live /usr is exactly the expected commit's, and nothing is in progress.
        st = live_state(sysroot)
        assert not (st and st.get("inprogress")), f"{context}: still in progress: {st}"
        assert live_commit(sysroot) == expect_live, f"{context}: state says {live_commit(sysroot)}"
        diff = tree_diff(self.commit_usr(expect_live), usr_entries(live / "usr"))
        assert not diff, f"{context}: live /usr is not {expect_live[:12]}:\n" + "\n".join(diff[:30])
        # Between applies the overlay is read-only; no .new folder or temp file is left.
        if fstype_at(live / "usr") == "overlay":
            assert _is_ro(live / "usr"), f"{context}: the live /usr is left writable"
        leftovers = leftover_temp_paths(live / "usr")
        assert not leftovers, f"{context}: leftovers {leftovers}"
        # The rpmdb opens and lists exactly the packages of the files.
        assert rpm_names(live) == self.packages_of(expect_live), context
        # The next boot's deployment is complete: its /usr is its commit's, its rpmdb and
        # its origin agree with it.
        nxt = pending(sysroot)
        ncommit = commit_of(nxt)
        diff = tree_diff(self.commit_usr(ncommit), usr_entries(nxt / "usr"))
        assert not diff, f"{context}: next boot's /usr is not its commit:\n" + "\n".join(diff[:30])
        pkgs = self.packages_of(ncommit)
        assert rpm_names(nxt) == pkgs, context
        assert requested(nxt) <= pkgs and ("htop" in pkgs) <= ("htop" in requested(nxt)), \
            f"{context}: origin {requested(nxt)}, packages {sorted(pkgs)}"
        assert (nxt / "etc").is_dir(), context
        ostree_fsck(sysroot)


def _is_ro(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


# --------------------------------------------------------------------------- 1. random kills


@dataclass
class KillStats:
    iterations: int = 0
    killed: int = 0
    finished: int = 0
    mid_apply: int = 0
    outcomes: Counter[str] | None = None

    def __post_init__(self) -> None:
        self.outcomes = Counter()


def _spawn(sysroot: Path, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(cli_argv(sysroot, *args), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ, LC_ALL="C"))


def random_kills(sysroot: Path, scratch: Path, iterations: int, seed: int, *, reboot_every: int = 0) -> KillStats:
    """Run live operations under SIGKILL at random moments; recover and check after each."""
    rng = random.Random(seed)
    checker = Checker(sysroot, scratch)
    stats = KillStats()
    assert stats.outcomes is not None
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
        proc = _spawn(sysroot, op, log)
        start = time.monotonic()
        marked = None
        if aim:
            while proc.poll() is None and not _inprogress(sysroot) and time.monotonic() - start < 60:
                time.sleep(0.001)
            marked = time.monotonic() if proc.poll() is None else None
            delay = rng.uniform(0, windows.get(name, 0.1)) if marked else 0.0
        else:
            delay = rng.uniform(0, 1.1 * durations.get(name, 0.7))
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        stats.iterations += 1
        st = live_state(sysroot)
        if rc == -signal.SIGKILL:
            stats.killed += 1
            if st and st.get("inprogress"):
                stats.mid_apply += 1
                where = "mid-apply"
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
                assert "no pending deployment" in one_error_line(out), context
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


def _report_kills(stats: KillStats, seed: int) -> None:
    print(f"random kills (seed {seed}): {stats.iterations} iterations, {stats.killed} killed, "
          f"{stats.mid_apply} killed mid-apply, {stats.finished} finished before the kill")
    assert stats.outcomes is not None
    for what, n in sorted(stats.outcomes.items()):
        print(f"  {n:4d}  {what}")


def test_random_kills_quick(sysroot: Path, tmp_path: Path) -> None:
    seed = seed_for("random kills quick")
    stats = random_kills(sysroot, tmp_path, 12, seed)
    _report_kills(stats, seed)
    assert stats.killed >= 1
    assert leftover_temp_paths(sysroot) == [] or _only_compose_scratch(sysroot)


@pytest.mark.slow
def test_random_kills_long(sysroot: Path, tmp_path: Path) -> None:
    seed = seed_for("random kills long")
    stats = random_kills(sysroot, tmp_path, int(os.environ.get("LULAYER_KILL_ITERATIONS", "220")), seed,
                         reboot_every=60)
    _report_kills(stats, seed)
    assert stats.iterations >= 200
    assert stats.mid_apply >= 10, "too few kills landed mid-apply to mean anything"
    # A layering command cleans what a killed compose left.
    lulayer(sysroot, "install", "--idempotent", "htop")
    assert leftover_temp_paths(sysroot) == []


def _only_compose_scratch(sysroot: Path) -> bool:
    # apply-live and reset do not compose, so they leave a killed compose's scratch for the
    # next layering command to clean (layering.compose.clean_stale_scratch).
    return all("/ostree/repo/tmp/lulayer-compose-" in p for p in leftover_temp_paths(sysroot))


# --------------------------------------------------------------------------- 2. disk full



def mount_tmpfs(path: Path, size: str) -> Path:
    """A tmpfs of SIZE at PATH (made if missing), in the test's private mount namespace;
    the sysroot's removal unmounts it."""
    path.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    return path


def resize_tmpfs(path: Path, size: str) -> None:
    run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def assert_live_is(sysroot: Path, commit: str, scratch: Path, packages: set[str]) -> None:
    """The live /usr is COMMIT's, nothing is in progress, nothing is left over."""
    live = booted(sysroot)
    st = live_state(sysroot)
    assert not (st and st.get("inprogress")), st
    assert live_commit(sysroot) == commit
    expected = usr_entries(checkout_subpath(sysroot, commit, "/usr", scratch))
    diff = tree_diff(expected, usr_entries(live / "usr"))
    assert not diff, "\n".join(diff[:30])
    assert leftover_temp_paths(live / "usr") == []
    assert rpm_names(live) == packages
    ostree_fsck(sysroot)


MANYFILE = "usr/share/manyfiles/d00/f000"


def test_upper_layer_full_mid_apply_is_a_clear_error_and_recovers(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    upper_fs = mount_tmpfs(backing_dir(sysroot), "1m")  # 500 files need ~2 MB of tmpfs pages

    failed = lulayer(sysroot, "install", "manyfiles", "--live", check=False)

    line = one_error_line(failed)
    assert "No space left on device" in line and "apply-live" in line, line
    target = commit_of(pending(sysroot))
    assert (pending(sysroot) / MANYFILE).is_file(), "the next boot's deployment is complete"
    st = live_state(sysroot)
    assert st and st["inprogress"] == target
    assert rpm_names(live) == BASE, "the rpmdb is swapped only after every file is written"
    written = len(list((live / "usr/share/manyfiles").rglob("f*")))
    print(f"upper layer on a 1 MiB tmpfs: {written} of 500 files written before ENOSPC")
    assert 0 < written < 500
    assert "InterruptedLiveCommit" in lulayer(sysroot, "status").stdout

    resize_tmpfs(upper_fs, "64m")
    lulayer(sysroot, "apply-live")

    assert_live_is(sysroot, target, tmp_path / "target", set(BASE | {"manyfiles"}))
    assert fstype_at(live / "usr") == "overlay"


def test_upper_layer_full_then_reset_returns_to_booted(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    mount_tmpfs(backing_dir(sysroot), "1m")
    one_error_line(lulayer(sysroot, "install", "manyfiles", "--live", check=False))

    lulayer(sysroot, "apply-live", "--reset")

    assert fstype_at(live / "usr") is None
    assert_live_is(sysroot, commit_of(live), tmp_path / "booted", set(BASE))
    assert (pending(sysroot) / MANYFILE).is_file()
    assert os.listdir(backing_dir(sysroot)) == []


def test_upper_layer_filled_by_ballast_recovers_with_next_command(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    upper_fs = mount_tmpfs(backing_dir(sysroot), "16m")
    lulayer(sysroot, "install", "htop", "--live")
    ballast = upper_fs / "ballast"
    vfs = os.statvfs(upper_fs)
    with open(ballast, "wb") as f:
        f.truncate(0)
        os.posix_fallocate(f.fileno(), 0, vfs.f_bavail * vfs.f_frsize - 256 * 1024)

    failed = lulayer(sysroot, "install", "manyfiles", "--live", check=False)

    assert "No space left on device" in one_error_line(failed)
    target = commit_of(pending(sysroot))
    assert rpm_names(live) == WITH_HTOP
    ballast.unlink()
    out = lulayer(sysroot, "install", "hello-config")  # any mutating command finishes it

    assert "interrupted live update" in out.stderr
    assert_live_is(sysroot, target, tmp_path / "target", set(WITH_HTOP | {"manyfiles"}))
    assert (pending(sysroot) / "usr/bin/hello-config").is_file()
    assert sorted(os.listdir(upper_fs)) == ["upper", "work"]


@pytest.mark.parametrize("free_kib", [1024, 3072], ids=["rpm-space-check", "enospc-writing-objects"])
def test_repository_full_during_compose_is_a_clear_error_and_leaves_no_deployment(tmp_path: Path,
                                                                                  free_kib: int) -> None:
    # manyfiles needs ~2 MiB in the compose's upper layer and ~2 MiB more of objects: with
    # 1 MiB free rpm's own space check refuses it, with 3 MiB the commit runs out.
    small = mount_tmpfs(tmp_path / "small", "64m")
    sysroot = fixture_build.clone_sysroot(fixture_build.sysroot_template(), small / "sysroot")
    try:
        vfs = os.statvfs(small)
        used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
        resize_tmpfs(small, f"{used // 1024 + free_kib}k")
        deployments = fixture_build.deployments(sysroot)
        objects = objects_count(sysroot)

        failed = lulayer(sysroot, "install", "manyfiles", check=False)

        line = one_error_line(failed)
        print(f"repository full: {line}")
        assert any(s in line for s in ("No space left on device", "free space", "min-free-space")), line
        assert fixture_build.deployments(sysroot) == deployments
        assert objects_count(sysroot) == objects
        assert list((repo_of(sysroot) / "tmp").glob("lulayer-*")) == []
        assert leftover_temp_paths(sysroot) == []
        ostree_fsck(sysroot)

        resize_tmpfs(small, "64m")
        lulayer(sysroot, "install", "manyfiles", "--live")
        assert rpm_names(booted(sysroot)) == BASE | {"manyfiles"}
        assert (pending(sysroot) / MANYFILE).is_file()
        ostree_fsck(sysroot)
    finally:
        fixture_build.remove_sysroot(small)


# --------------------------------------------------------------------------- 3. concurrency


@dataclass(frozen=True)
class Sample:
    start: float
    end: float
    rc: int
    out: str
    err: str


def _reader(argv: list[str], samples: list[Sample], stop: threading.Event) -> None:
    env = dict(os.environ, LC_ALL="C")
    while not stop.is_set():
        t0 = time.monotonic()
        p = subprocess.run(argv, capture_output=True, text=True, env=env)
        samples.append(Sample(t0, time.monotonic(), p.returncode, p.stdout, p.stderr))


def test_rpm_readers_during_upgrade_and_reset_never_fail_or_see_a_mix(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    lulayer(sysroot, "install", "upgrademe", "htop", "--live")
    repo = fixture_build.make_repo(tmp_path / "repo", [*fixture_build.default_repo_packages(),
                                                      fixture_build.rpm_path("upgrademe", "2.0")])
    point_repo_file(live, repo)
    root = ["rpm", "--root", str(live), "--dbpath", DBPATH]
    qa = [*root, "-qa", "--qf", "%{NEVRA}\n"]

    def nevras() -> frozenset[str]:
        return frozenset(run(qa, check=True).stdout.split())

    states = [nevras()]
    ops = [["upgrade", "--live", "--allow-replacement"], ["uninstall", "htop", "--live"],
           ["install", "htop", "--live"], ["apply-live", "--reset"]]
    spans: list[tuple[float, float]] = []
    qa_samples: list[Sample] = []
    q_samples: list[Sample] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_reader, args=(qa, qa_samples, stop)),
               threading.Thread(target=_reader, args=([*root, "-q", "htop"], q_samples, stop))]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        for op in ops:
            t0 = time.monotonic()
            lulayer(sysroot, *op)
            spans.append((t0, time.monotonic()))
            states.append(nevras())
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert len(set(states)) == len(states) - 1, "every operation changes the package set (reset returns to S0)"
    assert any("upgrademe-2.0" in n for n in states[1]) and not any("upgrademe-1.0" in n for n in states[1])

    def allowed(s: Sample) -> list[frozenset[str]]:
        first = sum(1 for _a, b in spans if b < s.start)
        last = sum(1 for a, _b in spans if a < s.end)
        return states[first:last + 1]

    bad = [s for s in qa_samples if s.rc != 0 or s.err or frozenset(s.out.split()) not in allowed(s)]
    assert not bad, bad[:3]
    bad_q = []
    for s in q_samples:
        answers = {("htop-3.3.0-1.fc41.x86_64\n", 0) if any(n.startswith("htop-3") for n in st)
                   else ("package htop is not installed\n", 1) for st in allowed(s)}
        if s.err or (s.out, s.rc) not in answers:
            bad_q.append(s)
    assert not bad_q, bad_q[:3]
    seen = {frozenset(s.out.split()) for s in qa_samples}
    assert set(states) <= seen, "the readers saw every state"
    during = Counter(next((i for i, (a, b) in enumerate(spans) if a <= s.start and s.end <= b), -1)
                     for s in qa_samples + q_samples)
    print(f"rpm readers: {len(qa_samples)} -qa and {len(q_samples)} -q htop runs, none failed or saw a mix; "
          f"wholly inside each operation ({', '.join(o[0] for o in ops)}): {[during[i] for i in range(len(ops))]}")
    assert all(during[i] >= 1 for i in range(len(ops))), during


def test_two_live_commands_at_once_serialize_and_both_apply(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_spawn(sysroot, ["install", "htop", "--live"], logs[0]),
             _spawn(sysroot, ["install", "hello-config", "--live"], logs[1])]
    rcs = [p.wait(timeout=300) for p in procs]
    assert rcs == [0, 0], [log.read_text() for log in logs]
    wait_unlocked(sysroot)  # the second one's deployment is written after it returns
    target = commit_of(pending(sysroot))
    assert requested(pending(sysroot)) == {"htop", "hello-config"}
    assert_live_is(sysroot, target, tmp_path / "target", set(WITH_HTOP | {"hello-config"}))
    assert (live / "etc/hello/hello.conf").is_file()


# --------------------------------------------------------------------------- 4. soak


def upper_usage(sysroot: Path) -> tuple[int, int]:
    """(bytes allocated, entries) of the live overlay's upper layer."""
    total = entries = 0
    for dirpath, dirs, files in os.walk(backing_dir(sysroot) / "upper"):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_blocks * 512
            entries += 1
    return total, entries


LULAYER_TMP_PREFIXES = ("lulayer-keys-", "lulayer-rpmdb-")  # lulayer's tempfile folders


def _temp_outside(sysroot: Path) -> set[str]:
    found = {str(p) for prefix in LULAYER_TMP_PREFIXES for p in Path(tempfile.gettempdir()).glob(f"{prefix}*")}
    return found | {str(p) for p in (repo_of(sysroot) / "tmp").glob("lulayer-*")}


def soak(sysroot: Path, cycles: int) -> None:
    live = booted(sysroot)
    tmp_before = _temp_outside(sysroot)
    objects_before = objects_count(sysroot)
    installed: list[tuple[int, int]] = []
    removed: list[tuple[int, int]] = []
    mounts: list[int] = []
    start = time.monotonic()
    for c in range(cycles):
        lulayer(sysroot, "install", "htop", "--live")
        installed.append(upper_usage(sysroot))
        lulayer(sysroot, "uninstall", "htop", "--live")
        removed.append(upper_usage(sysroot))
        mounts.append(len(mounts_under(sysroot)))
        leaked = _temp_outside(sysroot) - tmp_before
        assert not leaked, f"cycle {c}: {leaked}"
        assert leftover_temp_paths(sysroot) == [], f"cycle {c}"
        assert len(fixture_build.deployments(sysroot)) <= 3
    elapsed = time.monotonic() - start
    print(f"soak: {cycles} cycles of install --live/uninstall --live in {elapsed:.0f}s; mounts under the sysroot "
          f"{sorted(set(mounts))}; upper layer with htop {min(installed)}..{max(installed)} (bytes, entries), "
          f"without {min(removed)}..{max(removed)}; repository objects {objects_before} -> {objects_count(sysroot)}")
    assert set(mounts) == {mounts[0]} and mounts[0] == 1, mounts
    slack = 64 * 1024
    assert max(b for b, _ in installed) <= installed[0][0] + slack, installed
    assert max(b for b, _ in removed) <= removed[0][0] + slack, removed
    assert {e for _, e in installed} == {installed[0][1]}, installed
    assert {e for _, e in removed} == {removed[0][1]}, removed
    assert rpm_names(live) == BASE
    assert not (live / "usr/bin/htop").exists()
    ostree_fsck(sysroot)


def test_soak_quick(sysroot: Path) -> None:
    soak(sysroot, 5)


@pytest.mark.slow
def test_soak_long(sysroot: Path) -> None:
    soak(sysroot, 100)


# --------------------------------------------------------------------------- 5. hostile input


def _rpm_header(data: bytes | bytearray, off: int) -> tuple[dict[int, tuple[int, int, int]], int]:
    """An rpm header's index {tag: (type, data offset, count)} and where the header ends."""
    assert data[off:off + 3] == b"\x8e\xad\xe8", f"no rpm header at {off}"
    nindex, hsize = struct.unpack(">II", data[off + 8:off + 16])
    store = off + 16 + 16 * nindex
    index = {}
    for i in range(nindex):
        tag, typ, doff, count = struct.unpack(">IIII", data[off + 16 + 16 * i:off + 32 + 16 * i])
        index[tag] = (typ, store + doff, count)
    return index, store + hsize


def patch_rpm(src: Path, dest: Path, old: bytes, new: bytes) -> Path:
    """Copy SRC to DEST with OLD replaced by NEW (same length) in the main header and the
    (uncompressed) payload, and every digest recomputed: a valid RPM rpmbuild would never make."""
    assert len(old) == len(new)
    data = bytearray(src.read_bytes())
    sig, sig_end = _rpm_header(data, 96)  # after the 96-byte lead
    main_off = sig_end + (-sig_end % 8)
    data[main_off:] = data[main_off:].replace(old, new)
    main, main_end = _rpm_header(data, main_off)
    payload = bytes(data[main_end:])

    def put_hex(index: dict[int, tuple[int, int, int]], tag: int, digest: str) -> None:
        if tag in index:
            _typ, o, _count = index[tag]
            assert data[o + len(digest)] == 0
            data[o:o + len(digest)] = digest.encode()

    put_hex(main, 5092, hashlib.sha256(payload).hexdigest())  # PAYLOADDIGEST
    put_hex(main, 5097, hashlib.sha256(payload).hexdigest())  # PAYLOADDIGESTALT (uncompressed: the same)
    header = bytes(data[main_off:main_end])
    put_hex(sig, 269, hashlib.sha1(header).hexdigest())  # SHA1 of the header
    put_hex(sig, 273, hashlib.sha256(header).hexdigest())  # SHA256 of the header
    if 1004 in sig:  # MD5 of header and payload
        o = sig[1004][1]
        data[o:o + 16] = hashlib.md5(header + payload).digest()
    dest.write_bytes(bytes(data))
    return dest


@pytest.fixture(scope="session")
def hostile_rpms() -> Path:
    return build_spec_dir(HOSTILE_SPECS, "hostile-rpms")


def hostile_rpm(folder: Path, name: str) -> Path:
    (found,) = [p for p in folder.glob("*.rpm") if p.name.startswith(f"{name}-1.0-")]
    return found


def use_repo(sysroot: Path, repo_dir: Path, *extra: Path) -> Path:
    """A repository of the default packages plus EXTRA, used by the booted deployment."""
    repo = fixture_build.make_repo(repo_dir, [*fixture_build.default_repo_packages(), *extra])
    point_repo_file(booted(sysroot), repo)
    return repo


@dataclass(frozen=True)
class Untouched:
    """What a refused command must leave as it was: deployments, objects, refs, /etc of the host."""

    deployments: tuple[tuple[str, bytes], ...]
    objects: int
    refs: str
    host_etc: frozenset[str]

    @classmethod
    def of(cls, sysroot: Path) -> Untouched:
        refs = run(["ostree", f"--repo={repo_of(sysroot)}", "refs"], check=True).stdout
        deploy = sysroot / "ostree/deploy" / fixture_build.OSNAME / "deploy"
        # The deployment folders and their .origin files as bytes (libostree may not load them).
        listing = tuple(sorted((p.name, p.read_bytes() if p.is_file() else b"") for p in deploy.iterdir()))
        return cls(listing, objects_count(sysroot), refs, frozenset(os.listdir("/etc")))


DOTDOT_FROM, DOTDOT_TO = b"aa/bb/cc/dd/ee/ff/gg", b"../../../../../../.."


def test_rpmbuild_cleans_dotdot_out_of_payload_paths(hostile_rpms: Path, tmp_path: Path) -> None:
    """rpmbuild never makes a `..` path (rpmCleanPath), so the hostile package is crafted."""
    spec = tmp_path / "dotdot.spec"
    spec.write_text((HOSTILE_SPECS / "hostile-dotdot.spec").read_text().replace(
        "%files\n/usr/share/hostile-dotdot/aa/bb/cc/dd/ee/ff/gg/etc/lulayer-dotdot-evil",
        "%files\n/usr/share/hostile-dotdot/aa/bb/../bb/cc/dd/ee/ff/gg/etc/lulayer-dotdot-evil"))
    built = tmp_path / "built"
    run(["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {built}", "--define", "__os_install_post %{nil}",
         spec], check=True)
    (rpm_file,) = built.glob("RPMS/*/*.rpm")
    listed = run(["rpm", "-qpl", "--nosignature", str(rpm_file)], check=True).stdout
    assert ".." not in listed, listed
    crafted = patch_rpm(hostile_rpm(hostile_rpms, "hostile-dotdot"), tmp_path / "crafted.rpm",
                        DOTDOT_FROM, DOTDOT_TO)
    check = run(["rpm", "-K", "-v", str(crafted)], check=True).stdout
    assert "BAD" not in check and check.count(": OK") >= 4, check
    listed = run(["rpm", "-qpl", "--nosignature", str(crafted)], check=True).stdout
    assert "/usr/share/hostile-dotdot/../../../../../../../etc/lulayer-dotdot-evil" in listed


def test_payload_path_with_dotdot_is_refused(sysroot: Path, hostile_rpms: Path, tmp_path: Path) -> None:
    crafted = patch_rpm(hostile_rpm(hostile_rpms, "hostile-dotdot"),
                        tmp_path / hostile_rpm(hostile_rpms, "hostile-dotdot").name, DOTDOT_FROM, DOTDOT_TO)
    use_repo(sysroot, tmp_path / "repo", crafted)
    before = Untouched.of(sysroot)

    refused = lulayer(sysroot, "install", "hostile-dotdot", "--live", check=False)

    line = one_error_line(refused)
    assert ".." in line and "hostile-dotdot" in line, line
    assert Untouched.of(sysroot) == before
    assert not Path("/etc/lulayer-dotdot-evil").exists()
    assert not list(sysroot.rglob("lulayer-dotdot-evil"))


def test_absolute_symlink_out_of_tree_never_leads_a_write_outside(sysroot: Path, hostile_rpms: Path,
                                                                  tmp_path: Path) -> None:
    live = booted(sysroot)
    use_repo(sysroot, tmp_path / "repo", hostile_rpm(hostile_rpms, "hostile-evil-link"),
             hostile_rpm(hostile_rpms, "hostile-through-link"))
    host_etc = set(os.listdir("/etc"))
    lulayer(sysroot, "install", "hostile-evil-link", "--live")
    assert os.readlink(live / "usr/share/hostile-evil") == "/etc"

    out = lulayer(sysroot, "install", "hostile-through-link", "--live", check=False)

    assert not Path("/etc/lulayer-hostile-through-link").exists()
    assert set(os.listdir("/etc")) == host_etc
    target = commit_of(pending(sysroot))
    if out.returncode == 0:
        # rpm resolved the symlink inside its chroot: the file went to the image's /etc
        # (/usr/etc in the commit), and the live apply added it to the deployment's /etc.
        assert os.readlink(live / "usr/share/hostile-evil") == "/etc"
        assert (pending(sysroot) / "usr/etc/lulayer-hostile-through-link").is_file()
        assert (live / "etc/lulayer-hostile-through-link").is_file()
        assert_live_is(sysroot, target, tmp_path / "target",
                       set(BASE | {"hostile-evil-link", "hostile-through-link"}))
    else:
        one_error_line(out)


def test_symlink_in_live_tree_where_new_directory_goes_is_refused(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    outside = tmp_path / "outside"
    outside.mkdir()
    (live / "usr/share/doc/htop").symlink_to(outside)

    refused = lulayer(sysroot, "install", "htop", "--live", check=False)

    line = one_error_line(refused)
    assert "usr/share/doc/htop" in line, line
    assert list(outside.iterdir()) == []
    assert (pending(sysroot) / "usr/share/doc/htop/README").is_file(), "the next boot's deployment is complete"
    # The way out the message names: reset, move the symlink aside, apply again.
    lulayer(sysroot, "apply-live", "--reset")
    (live / "usr/share/doc/htop").unlink()
    lulayer(sysroot, "apply-live")
    assert_live_is(sysroot, commit_of(pending(sysroot)), tmp_path / "target", set(WITH_HTOP))
    assert list(outside.iterdir()) == []


def test_symlink_in_live_tree_on_a_parent_directory_is_refused(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    outside = tmp_path / "outside"
    outside.mkdir()
    doc = live / "usr/share/doc"
    doc.rmdir()
    doc.symlink_to(outside)

    before = Untouched.of(sysroot)

    line = one_error_line(lulayer(sysroot, "install", "htop", "--live", check=False))

    # rpm, composing on the booted checkout, will not unpack through the foreign symlink;
    # before this was caught the image silently lacked htop.
    assert "usr/share/doc" in line, line
    assert Untouched.of(sysroot) == before
    assert list(outside.iterdir()) == []
    assert fstype_at(live / "usr") is None


def test_setuid_and_setgid_bits_survive_image_and_live(sysroot: Path, hostile_rpms: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    use_repo(sysroot, tmp_path / "repo", hostile_rpm(hostile_rpms, "hostile-suid"))

    lulayer(sysroot, "install", "hostile-suid", "--live")

    for root in (pending(sysroot), live):
        assert oct((root / "usr/bin/hostile-suid").lstat().st_mode & 0o7777) == oct(0o4755), root
        assert oct((root / "usr/share/hostile-suid").lstat().st_mode & 0o7777) == oct(0o2775), root
    ran = run(["chroot", str(live), "/usr/bin/hostile-suid"])
    assert ran.stdout.strip() == "hostile-suid", describe(ran)
    verify = rpm(live, "-V", "--nomtime", "hostile-suid")  # OSTree keeps no mtimes
    assert verify.returncode == 0, describe(verify)
    assert_live_is(sysroot, commit_of(pending(sysroot)), tmp_path / "target", set(BASE | {"hostile-suid"}))


def test_device_nodes_in_a_package_are_refused(sysroot: Path, hostile_rpms: Path, tmp_path: Path) -> None:
    use_repo(sysroot, tmp_path / "repo", hostile_rpm(hostile_rpms, "hostile-dev"))
    before = Untouched.of(sysroot)

    refused = lulayer(sysroot, "install", "hostile-dev", "--live", check=False)

    line = one_error_line(refused)
    assert "/usr/share/hostile-dev/" in line and "device" in line, line
    assert Untouched.of(sysroot) == before
    assert list((repo_of(sysroot) / "tmp").glob("lulayer-*")) == []


def test_longest_file_name_is_layered_or_refused_clearly(sysroot: Path, hostile_rpms: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    use_repo(sysroot, tmp_path / "repo", hostile_rpm(hostile_rpms, "hostile-longname"))
    name = "hostile-longname-" + "0" * 238
    assert len(name.encode()) == 255
    before = Untouched.of(sysroot)

    out = lulayer(sysroot, "install", "hostile-longname", "--live", check=False)

    if out.returncode == 0:
        assert (live / "usr/share/hostile-longname" / name).read_text() == "long\n"
        assert_live_is(sysroot, commit_of(pending(sysroot)), tmp_path / "target", set(BASE | {"hostile-longname"}))
    else:
        line = one_error_line(out)
        assert "name" in line.lower(), line
        assert Untouched.of(sysroot) == before


def test_names_over_255_bytes_cannot_exist_on_linux(tmp_path: Path) -> None:
    """Why no package carries a 256-byte name: no file system lets rpmbuild make one, and
    rpm itself could not install it (NAME_MAX is 255 on every Linux file system)."""
    with pytest.raises(OSError) as e:
        (tmp_path / ("x" * 256)).write_text("")
    assert e.value.errno == 36  # ENAMETOOLONG


# .origin files: corrupt or hand-edited


def _origin(deployment: Path) -> Path:
    return Path(f"{deployment}.origin")


def test_origin_with_garbage_bytes_is_refused(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    origin = _origin(pending(sysroot))
    origin.write_bytes(b"\x00\xff\xfe[origin\x07 garbage \x89PNG\r\n\x1a\n" + os.urandom(64))
    before = Untouched.of(sysroot)

    for args in (("install", "hello-config"), ("status",), ("apply-live",)):
        line = one_error_line(lulayer(sysroot, *args, check=False))
        assert "origin" in line.lower() or "sysroot" in line.lower(), line
    assert Untouched.of(sysroot) == before


def test_origin_without_refspec_is_refused(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    origin = _origin(pending(sysroot))
    origin.write_text("\n".join(ln for ln in origin.read_text().splitlines() if "refspec" not in ln) + "\n")
    before = Untouched.of(sysroot)

    line = one_error_line(lulayer(sysroot, "install", "hello-config", check=False))

    assert "refspec" in line, line
    assert Untouched.of(sysroot) == before


def test_origin_requesting_a_vanished_package_is_refused(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    origin = _origin(pending(sysroot))
    origin.write_text(origin.read_text().replace("requested=htop;", "requested=htop;no-longer-exists;"))
    assert "no-longer-exists" in origin.read_text()
    before = Untouched.of(sysroot)

    line = one_error_line(lulayer(sysroot, "install", "hello-config", "--live", check=False))

    assert "no-longer-exists" in line, line
    assert Untouched.of(sysroot) == before
    assert lulayer(sysroot, "status").returncode == 0
    assert "no-longer-exists" in lulayer(sysroot, "status").stdout
    # The way out: uninstall the name that no longer resolves.
    lulayer(sysroot, "uninstall", "no-longer-exists")
    assert requested(pending(sysroot)) == {"htop"}
    assert rpm_names(pending(sysroot)) == WITH_HTOP


# --------------------------------------------------------------------------- 6. signatures


@dataclass(frozen=True)
class Key:
    home: Path
    keyid: str
    public: bytes


def _make_key(home: Path, uid: str) -> Key:
    home.mkdir(mode=0o700, parents=True)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "rsa2048", "sign", "never"],
                   env=env, check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys", uid], env=env, check=True,
                             capture_output=True, text=True).stdout
    keyid = next(line.split(":")[4] for line in listing.splitlines() if line.startswith("pub:"))
    public = subprocess.run(["gpg", "--batch", "--armor", "--export", keyid], env=env, check=True,
                            capture_output=True).stdout
    return Key(home, keyid, public)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Key, Key]]:
    top = tmp_path_factory.mktemp("gpg")
    made = (_make_key(top / "tree", "lulayer tree key <tree@lulayer.invalid>"),
            _make_key(top / "other", "lulayer other key <other@lulayer.invalid>"))
    yield made
    for key in made:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=dict(os.environ, GNUPGHOME=str(key.home)),
                       capture_output=True)


def signed_copy(rpm_file: Path, dest_dir: Path, key: Key) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / rpm_file.name
    dest.write_bytes(rpm_file.read_bytes())
    run(["rpmsign", "--addsign", "--define", "__gpg /usr/bin/gpg", "--define", f"_gpg_name {key.keyid}",
         "--define", f"_gpg_path {key.home}", str(dest)], check=True)
    return dest


def gpgcheck_with(sysroot: Path, key: Key) -> None:
    """gpgcheck=1 with KEY in the booted deployment's /etc/pki/rpm-gpg."""
    live = booted(sysroot)
    keyfile = live / "etc/pki/rpm-gpg/RPM-GPG-KEY-lulayer-tree"
    keyfile.parent.mkdir(parents=True, exist_ok=True)
    keyfile.write_bytes(key.public)
    f = live / fixture_build.REPO_FILE
    lines = [ln for ln in f.read_text().splitlines() if not ln.startswith(("gpgcheck=", "gpgkey="))]
    f.write_text("\n".join([*lines, "gpgcheck=1", "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-lulayer-tree"]) + "\n")


def htop_pair(tmp_path: Path, sign: Callable[[Path, Path], Path]) -> list[Path]:
    return [sign(fixture_build.rpm_path(n), tmp_path / "signed") for n in ("htop", "ncurses-libs")]


def test_package_signed_with_the_trees_key_installs(sysroot: Path, tmp_path: Path, keys: tuple[Key, Key]) -> None:
    tree_key, _other = keys
    live = booted(sysroot)
    signed = htop_pair(tmp_path, lambda p, d: signed_copy(p, d, tree_key))
    assert tree_key.keyid[-8:].lower() in run(["rpm", "-qpi", "--nosignature", str(signed[0])]).stdout.lower()
    repo = fixture_build.make_repo(tmp_path / "repo", signed)
    point_repo_file(live, repo)
    gpgcheck_with(sysroot, tree_key)

    lulayer(sysroot, "install", "htop", "--live")

    assert rpm_names(live) == WITH_HTOP
    assert_live_is(sysroot, commit_of(pending(sysroot)), tmp_path / "target", set(WITH_HTOP))


@pytest.mark.parametrize("case", ["other-key", "altered-after-signing", "dependency-unsigned"])
def test_bad_signatures_are_refused_before_anything_is_written(sysroot: Path, tmp_path: Path,
                                                              keys: tuple[Key, Key], case: str) -> None:
    tree_key, other_key = keys
    live = booted(sysroot)
    if case == "other-key":
        rpms = htop_pair(tmp_path, lambda p, d: signed_copy(p, d, other_key))
    elif case == "altered-after-signing":
        rpms = htop_pair(tmp_path, lambda p, d: signed_copy(p, d, tree_key))
        data = bytearray(rpms[0].read_bytes())
        at = data.rfind(b"htop 3.3.0")  # inside the payload: compressed, so flip a byte near the end
        data[len(data) - 40 if at < 0 else at] ^= 0x01
        rpms[0].write_bytes(bytes(data))
    else:
        rpms = [signed_copy(fixture_build.rpm_path("htop"), tmp_path / "signed", tree_key),
                fixture_build.rpm_path("ncurses-libs")]
    repo = fixture_build.make_repo(tmp_path / "repo", rpms)  # metadata digests match the files as they are
    point_repo_file(live, repo)
    gpgcheck_with(sysroot, tree_key)
    before = Untouched.of(sysroot)
    usr_before = usr_entries(live / "usr")

    refused = lulayer(sysroot, "install", "htop", "--live", check=False)

    line = one_error_line(refused)
    assert "signature" in line or "not signed" in line, line
    assert Untouched.of(sysroot) == before
    assert usr_entries(live / "usr") == usr_before
    assert fstype_at(live / "usr") is None
    assert list((repo_of(sysroot) / "tmp").glob("lulayer-*")) == []


# --------------------------------------------------------------------------- 1b. kills inside --reset


@pytest.mark.parametrize("step", RESET_STEPS)
def test_reset_killed_at_each_step_is_finished_by_next_command(sysroot: Path, tmp_path: Path, step: str) -> None:
    """A reset killed after it unmounted the overlay must not leave a state that claims the
    old live commit: the next apply would see nothing to do (or diff from the wrong tree)."""
    live = booted(sysroot)
    lulayer(sysroot, "install", "htop", "--live")
    lulayer(sysroot, "install", "hello-config")  # a pending deployment beyond the live one
    killed = lulayer(sysroot, "apply-live", "--reset", check=False, env={FAULT_ENV: step})
    assert killed.returncode == -9, describe(killed)

    out = lulayer(sysroot, "apply-live")

    checker = Checker(sysroot, tmp_path)
    checker.check(commit_of(pending(sysroot)), f"reset killed at {step}, then {describe(out)}")
    assert rpm_names(live) == WITH_HTOP | {"hello-config"}
