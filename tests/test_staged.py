"""Staged deployments: `--live` returns once the change is live; a detached child
writes the next boot's deployment (layering/staged.py).

The fault points stop or kill that child where the tests need it to be, so
every state a user can see is looked at deterministically: being written, not
written (the writer was killed), failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from lulayer.faults import FAULT_ENV
from lulayer.layering.staged import WRITER
from tests.helpers import (
    WITH_HTOP,
    booted,
    chroot,
    cli_argv,
    commit_of,
    describe,
    lulayer,
    one_error_line,
    origin_of,
    ostree_fsck,
    pending,
    rpm_names,
    run,
    staged_record,
    wait_unlocked,
)

pytestmark = pytest.mark.root

deployments = fixture_build.deployments


def _status_json(sysroot: Path) -> dict[str, object]:
    return json.loads(lulayer(sysroot, "status", "--json").stdout)  # type: ignore[no-any-return]


def _deployments_json(sysroot: Path) -> list[dict[str, object]]:
    """status --json's deployments, in boot order: a staged one first, as rpm-ostree lists it."""
    deps = _status_json(sysroot)["deployments"]
    assert isinstance(deps, list)
    return deps


def _install_live_with_writer_killed(sysroot: Path) -> subprocess.CompletedProcess[str]:
    out = lulayer(sysroot, "install", "htop", "--live", env={FAULT_ENV: "staged-write"})
    # lulayer() waited for the lock: the writer is gone, killed before it wrote anything.
    return out


def _writer_pid(sysroot: Path) -> int | None:
    """The pid of the detached writer while it holds the sysroot lock, else None."""
    try:
        pid, _, what = (sysroot / "run/lulayer/lock.owner").read_text().partition(" ")
    except FileNotFoundError:
        return None
    return int(pid) if what.strip() == WRITER else None


def _is_stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].startswith("T")


@pytest.fixture
def stopped_writer(sysroot: Path) -> Iterator[int]:
    """install htop --live returned; its writer is stopped (SIGSTOP) before writing. Yields its pid."""
    lulayer(sysroot, "install", "htop", "--live", env={FAULT_ENV: "staged-stop"}, settle=False)
    deadline = time.monotonic() + 30
    pid = _writer_pid(sysroot)
    while not (pid is not None and _is_stopped(pid)):
        assert time.monotonic() < deadline, f"no stopped detached writer holds the lock (writer pid {pid})"
        time.sleep(0.02)
        pid = _writer_pid(sysroot)
    try:
        yield pid
    finally:
        with suppress(ProcessLookupError):  # the test continued it, and it is gone
            os.kill(pid, signal.SIGCONT)
        wait_unlocked(sysroot)


def test_install_live_returns_with_htop_live_while_the_deployment_is_being_written(
        sysroot: Path, stopped_writer: int) -> None:
    live = booted(sysroot)
    assert chroot(live, "htop").stdout.strip() == "htop 3.3.0"
    assert rpm_names(live) == WITH_HTOP
    assert deployments(sysroot) == [live], "nothing is deployed until the writer runs"

    text = lulayer(sysroot, "status").stdout
    assert "(pending, staged: being written)" in text, text
    assert "LayeredPackages: htop" in text and "+ htop-3.3.0-1.fc41.x86_64" in text, text
    staged = _deployments_json(sysroot)[0]
    assert staged["staged"] and staged["lulayer-being-written"]
    assert staged["requested-packages"] == ["htop"]

    os.kill(stopped_writer, signal.SIGCONT)
    wait_unlocked(sysroot)

    assert staged_record(sysroot) is None
    nxt = pending(sysroot)
    assert commit_of(nxt) == staged["checksum"]
    assert "requested=htop;" in origin_of(nxt)
    assert rpm_names(nxt) == WITH_HTOP
    assert not any(d["staged"] for d in _deployments_json(sysroot))
    ostree_fsck(sysroot)


def test_a_command_meanwhile_waits_for_the_writer_then_builds_on_its_deployment(
        sysroot: Path, stopped_writer: int, tmp_path: Path) -> None:
    log = tmp_path / "second.err"
    with open(log, "w") as err_file:
        second = subprocess.Popen(cli_argv(sysroot, "install", "hello-config"), stdout=subprocess.DEVNULL,
                                  stderr=err_file, text=True)
    # It says it waits, and keeps waiting, while the writer is stopped (however slowly it starts).
    deadline = time.monotonic() + 60
    while "waiting for the sysroot lock" not in log.read_text():
        assert second.poll() is None, f"the second command ended without waiting for the lock:\n{log.read_text()}"
        assert time.monotonic() < deadline, "the second command never said it waits for the lock"
        time.sleep(0.02)
    time.sleep(0.5)
    assert second.poll() is None, "the second command should wait for the sysroot lock"
    os.kill(stopped_writer, signal.SIGCONT)
    second.wait(timeout=120)
    err = log.read_text()
    assert second.returncode == 0, err
    assert f"waiting for the sysroot lock, held by lulayer (pid {stopped_writer}: {WRITER})" in err, err

    assert "requested=hello-config;htop;" in origin_of(pending(sysroot))
    assert len(deployments(sysroot)) == 2  # the writer's deployment was replaced by the second one's
    ostree_fsck(sysroot)


def test_killed_writer_leaves_the_deployment_staged_and_status_says_so(sysroot: Path) -> None:
    out = _install_live_with_writer_killed(sysroot)
    assert "being written in the background" in out.stdout, describe(out)
    live = booted(sysroot)
    assert rpm_names(live) == WITH_HTOP
    assert deployments(sysroot) == [live]
    record = staged_record(sysroot)
    assert record is not None and record["requested"] == ["htop"]

    text = lulayer(sysroot, "status").stdout
    assert "(pending, staged: not written yet; `lulayer finalize` or a reboot writes it)" in text, text


def test_finalize_writes_a_staged_deployment_once(sysroot: Path) -> None:
    _install_live_with_writer_killed(sysroot)
    target = str(staged_record(sysroot)["commit"])  # type: ignore[index]

    assert lulayer(sysroot, "finalize").stdout.startswith(f"Wrote the staged deployment {target}.")
    assert commit_of(pending(sysroot)) == target
    assert lulayer(sysroot, "finalize").stdout.strip() == "No staged deployment to write."
    assert len(deployments(sysroot)) == 2
    ostree_fsck(sysroot)


def test_next_command_first_writes_a_deployment_whose_writer_was_killed(sysroot: Path) -> None:
    _install_live_with_writer_killed(sysroot)

    out = lulayer(sysroot, "install", "hello-config")

    assert "Wrote the deployment staged for the next boot" in out.stderr, describe(out)
    assert "requested=hello-config;htop;" in origin_of(pending(sysroot))
    assert staged_record(sysroot) is None
    ostree_fsck(sysroot)


def test_reboot_writes_and_boots_a_staged_deployment(sysroot: Path) -> None:
    old = booted(sysroot)
    _install_live_with_writer_killed(sysroot)

    new = fixture_build.reboot(sysroot)  # shutdown runs lulayer-finalize.service's ExecStop=

    assert booted(sysroot) == new and new != old
    assert chroot(new, "htop").stdout.strip() == "htop 3.3.0"
    assert staged_record(sysroot) is None


def test_cleanup_pending_drops_a_staged_deployment_unwritten(sysroot: Path) -> None:
    _install_live_with_writer_killed(sysroot)
    live = booted(sysroot)

    out = lulayer(sysroot, "cleanup", "--pending")

    assert "Dropped the staged deployment" in out.stdout, describe(out)
    assert staged_record(sysroot) is None
    assert deployments(sysroot) == [live]
    assert fixture_build.reboot(sysroot) == live


def test_failed_write_is_recorded_shown_and_blocks_until_fixed(sysroot: Path) -> None:
    _install_live_with_writer_killed(sysroot)
    record = staged_record(sysroot)
    assert record is not None
    failure = f"writing the staged deployment of {str(record['commit'])[:12]} failed: "
    deploy_dir = sysroot / "ostree" / "deploy" / fixture_build.OSNAME / "deploy"
    run(["chattr", "+i", deploy_dir], check=True)  # no new deployment folder can be made
    try:
        failed = lulayer(sysroot, "finalize", check=False)
        assert failed.returncode == 1, describe(failed)
        one_error_line(failed, failure, "Operation not permitted", "drop it with `lulayer cleanup --pending`")

        record = staged_record(sysroot)
        assert record is not None and "Operation not permitted" in str(record["error"]), record
        text = lulayer(sysroot, "status").stdout
        assert "(pending, staged: write failed: " in text, text
        blocked = lulayer(sysroot, "install", "hello-config", check=False)
        assert blocked.returncode == 1, describe(blocked)
        one_error_line(blocked, failure)
        assert deployments(sysroot) == [booted(sysroot)]
    finally:
        run(["chattr", "-i", deploy_dir], check=True)

    lulayer(sysroot, "finalize")
    assert "requested=htop;" in origin_of(pending(sysroot))
    ostree_fsck(sysroot)


def test_install_without_live_writes_the_deployment_before_returning(sysroot: Path) -> None:
    out = lulayer(sysroot, "install", "htop", env={FAULT_ENV: "staged-write"})  # no writer to kill
    assert "background" not in out.stdout
    assert staged_record(sysroot) is None
    assert rpm_names(pending(sysroot)) == WITH_HTOP


def test_status_marks_the_deployment_a_staged_one_replaces(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    htop_deployment = pending(sysroot)
    lulayer(sysroot, "uninstall", "htop", "--live", env={FAULT_ENV: "staged-write"})

    text = lulayer(sysroot, "status").stdout
    blocks = text.split("\n\n")
    assert "(pending, staged: not written yet" in blocks[0] and "LayeredPackages" not in blocks[0], text
    assert "(superseded by the staged deployment)" in blocks[1] and "LayeredPackages: htop" in blocks[1], text
    deps = _deployments_json(sysroot)
    assert [d["staged"] for d in deps] == [True, False, False], deps  # the staged one first, as rpm-ostree lists it
    assert [d["lulayer-superseded"] for d in deps] == [False, True, False], deps

    lulayer(sysroot, "finalize")
    assert htop_deployment not in deployments(sysroot)
    assert origin_of(pending(sysroot)).count("requested") == 0
