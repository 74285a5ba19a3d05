"""Concurrency: rpm readers looping through every kind of live operation, and two live commands
at once. Readers never fail and never see anything but the package set before or after; the
second command waits for the sysroot lock and both end applied.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import (
    DBPATH,
    WITH_HTOP,
    booted,
    commit_of,
    lulayer,
    pending,
    point_repo_file,
    run,
    spawn_lulayer,
    wait_unlocked,
)
from tests.invariants import assert_live_is, requested

pytestmark = pytest.mark.root


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
    procs = [spawn_lulayer(sysroot, ["install", "htop", "--live"], logs[0]),
             spawn_lulayer(sysroot, ["install", "hello-config", "--live"], logs[1])]
    rcs = [p.wait(timeout=300) for p in procs]
    assert rcs == [0, 0], [log.read_text() for log in logs]
    wait_unlocked(sysroot)  # the second one's deployment is written after it returns
    target = commit_of(pending(sysroot))
    assert requested(pending(sysroot)) == {"htop", "hello-config"}
    assert_live_is(sysroot, target, tmp_path / "target", set(WITH_HTOP | {"hello-config"}))
    assert (live / "etc/hello/hello.conf").is_file()
