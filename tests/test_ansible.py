"""The Ansible module lulayer.lulayer.lulayer_pkg (ansible/ansible_collections/lulayer/lulayer), run by
ansible-playbook (ansible-core from PyPI, the project's test extra) against localhost, on a fixture
sysroot; and `ansible-test sanity` on the collection.

Each step is a playbook of one task whose registered result is written out and checked here:
`changed`, `needs_reboot` and the diff, and on disk what a user would look at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gi
import pytest

from fixtures import build as fixture_build
from tests.helpers import (
    booted,
    chroot,
    commit_of,
    describe,
    lulayer,
    origin_of,
    pending,
    point_repo_file,
    tree_snapshot,
)

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, OSTree  # noqa: E402

TOP = Path(__file__).resolve().parent.parent
COLLECTIONS = TOP / "ansible"
COLLECTION = COLLECTIONS / "ansible_collections" / "lulayer" / "lulayer"
BIN = Path(sys.executable).parent  # ansible-playbook, ansible-test and lulayer, as pip installed them
# Caches: the resolver's, ostree's scratch, and the base checkout a dry run composes on when the
# booted /usr carries a live overlay (lulayer/base, never written after it is made).
UNTRACKED = ("deploy/fedora/var/cache", "repo/tmp", "lulayer/base")


def ansible_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "ansible-home"
    home.mkdir(exist_ok=True)
    return dict(
        os.environ,
        LC_ALL="C.UTF-8",
        PATH=f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(home / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )


def playbook(tmp_path: Path, task: dict[str, object], *, check: bool = False) -> tuple[subprocess.Popen[str], Path]:
    """Start ansible-playbook on localhost with the one lulayer_pkg task; return it and where
    its registered result goes (see finish)."""
    n = len(list(tmp_path.glob("play-*.yml")))
    result = tmp_path / f"result-{n}.json"
    book = tmp_path / f"play-{n}.yml"
    book.write_text(textwrap.dedent(f"""\
        - hosts: localhost
          gather_facts: false
          tasks:
            - name: lulayer_pkg
              lulayer.lulayer.lulayer_pkg: {json.dumps(task)}
              register: result
              check_mode: {json.dumps(check)}
              diff: true
              ignore_errors: true
            - name: write the result out
              ansible.builtin.copy:
                content: "{{{{ result | to_json }}}}"
                dest: {result}
              check_mode: false
        """))
    proc = subprocess.Popen(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(book)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ansible_env(tmp_path))
    return proc, result


def finish(started: tuple[subprocess.Popen[str], Path]) -> dict[str, object]:
    proc, path = started
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    result = json.loads(path.read_text())
    assert isinstance(result, dict), out
    return result


def step(tmp_path: Path, task: dict[str, object], *, check: bool = False) -> dict[str, object]:
    """Run the task in a playbook; return its registered result."""
    return finish(playbook(tmp_path, task, check=check))


def settled(sysroot: Path) -> Path:
    fixture_build.wait_unlocked(sysroot)  # a live change's detached writer
    return sysroot


def diff_of(result: dict[str, object]) -> tuple[str, str]:
    diff = result["diff"]
    assert isinstance(diff, dict), result
    return str(diff["before"]), str(diff["after"])


@pytest.mark.root
def test_playbook_present_again_check_absent_live_and_latest(sysroot: Path, tmp_path: Path) -> None:
    live = booted(sysroot)
    base = commit_of(live)
    task = {"name": ["htop"], "sysroot": str(sysroot), "apply_live": True}

    present = step(tmp_path, task)
    settled(sysroot)
    assert not present.get("failed"), present
    assert present["changed"] is True and present["needs_reboot"] is False, present  # live: nothing to reboot for
    before, after = diff_of(present)
    assert before == "requested: \n" and "htop-3.3.0-1.fc41.x86_64" in after, (before, after)
    assert chroot(live, "htop").stdout.strip() == "htop 3.3.0"
    assert "requested=htop;" in origin_of(pending(sysroot))

    again = step(tmp_path, task)
    assert again["changed"] is False and again["needs_reboot"] is False, again
    assert diff_of(again)[0] == diff_of(again)[1]

    snapshot = tree_snapshot(sysroot / "ostree", UNTRACKED)
    checked = step(tmp_path, {"name": ["hello-config"], "sysroot": str(sysroot)}, check=True)
    assert checked["changed"] is True and checked["needs_reboot"] is True, checked
    assert "hello-config-1.0-1.fc41.noarch" in diff_of(checked)[1]
    assert tree_snapshot(sysroot / "ostree", UNTRACKED) == snapshot, "check mode changed the sysroot"

    absent = step(tmp_path, {**task, "state": "absent"})
    settled(sysroot)
    assert absent["changed"] is True and absent["needs_reboot"] is False, absent
    before, after = diff_of(absent)
    assert "htop-3.3.0-1.fc41.x86_64" in before and "htop" not in after, (before, after)
    assert chroot(live, "sh", "-c", "command -v htop").returncode != 0, "htop is still live"
    assert "htop" not in origin_of(pending(sysroot))

    upgrademe = {"name": ["upgrademe"], "sysroot": str(sysroot)}
    first = step(tmp_path, upgrademe)
    assert first["changed"] is True and first["needs_reboot"] is True, first
    repo = fixture_build.make_repo(tmp_path / "repo", [*fixture_build.default_repo_packages(),
                                                        fixture_build.rpm_path("upgrademe", "2.0")])
    point_repo_file(live, repo)  # the repository moves on: upgrademe 2.0
    assert step(tmp_path, upgrademe)["changed"] is False, "present leaves a layered package at its version"
    latest = step(tmp_path, {**upgrademe, "state": "latest"})
    assert latest["changed"] is True and latest["needs_reboot"] is True, latest
    before, after = diff_of(latest)
    assert "upgrademe-1.0-1.fc41.x86_64" in before and "upgrademe-2.0-1.fc41.x86_64" in after, (before, after)
    assert chroot(pending(sysroot), "upgrademe").stdout.strip() == "upgrademe 2.0"
    status = json.loads(lulayer(sysroot, "status", "--json").stdout)["deployments"]
    assert status[0]["base-checksum"] == base, "latest moved the base image (an OS update)"
    latest_again = step(tmp_path, {**upgrademe, "state": "latest"})
    assert latest_again["changed"] is False and latest_again["needs_reboot"] is True, latest_again


def lulayer_running(sysroot: Path) -> bool:
    """Whether a lulayer process works on sysroot now (its command line names it)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if str(sysroot).encode() in args and any(a.endswith(b"lulayer") for a in args):
            return True
    return False


@pytest.mark.root
def test_module_waits_for_the_sysroot_lock(sysroot: Path, tmp_path: Path) -> None:
    lock = OSTree.Sysroot.new(Gio.File.new_for_path(str(sysroot)))
    lock.lock()  # as another lulayer, ostree admin or rpm-ostreed would hold it
    try:
        started = playbook(tmp_path, {"name": ["htop"], "sysroot": str(sysroot)})
        deadline = time.monotonic() + 300
        while not lulayer_running(sysroot):  # ansible-playbook starts, its module runs lulayer
            assert started[0].poll() is None and time.monotonic() < deadline, "lulayer never ran"
            time.sleep(0.2)
        time.sleep(2)
        assert started[0].poll() is None, "the module did not wait for the lock"
    finally:
        lock.unlock()
    result = finish(started)
    assert result["changed"] is True and not result.get("failed"), result
    assert "waiting for the sysroot lock" in str(result["stderr"]), result


@pytest.mark.root
def test_module_refuses_an_empty_name_list(sysroot: Path, tmp_path: Path) -> None:
    snapshot = tree_snapshot(sysroot / "ostree", UNTRACKED)
    result = step(tmp_path, {"name": [], "sysroot": str(sysroot), "state": "absent"})
    assert result["failed"] is True and "name lists no package" in str(result["msg"]), result
    assert tree_snapshot(sysroot / "ostree", UNTRACKED) == snapshot


@pytest.mark.root
def test_module_failure_is_lulayers_one_line(sysroot: Path, tmp_path: Path) -> None:
    result = step(tmp_path, {"name": ["no-such-package"], "sysroot": str(sysroot)})
    assert result["failed"] is True and str(result["msg"]).startswith("error: "), result
    assert "no-such-package" in str(result["msg"]), result


def test_ansible_doc_reads_the_module_documentation(tmp_path: Path) -> None:
    proc = subprocess.run([str(BIN / "ansible-doc"), "--json", "lulayer.lulayer.lulayer_pkg"],
                          capture_output=True, text=True, env=ansible_env(tmp_path), timeout=120, check=False)
    assert proc.returncode == 0, describe(proc)
    doc = json.loads(proc.stdout)["lulayer.lulayer.lulayer_pkg"]["doc"]
    assert set(doc["options"]) == {"name", "state", "apply_live", "sysroot"}
    assert doc["options"]["state"]["choices"] == ["absent", "latest", "present"]
    assert doc["attributes"]["check_mode"]["support"] == "full"


# get-pip.py stand-in for ansible-test's per-test virtual environments: ansible-test would
# download get-pip.py from ci-files.testing.ansible.com, which this machine cannot reach. pip
# comes from the interpreter's own ensurepip; the sanity tests' pinned tools then come from PyPI
# (pip's cache keeps them) and the environments are kept in ANSIBLE_TEST_HOME for later runs.
GET_PIP = '''\
import ensurepip
import runpy
import sys

ensurepip.bootstrap(upgrade=True)
sys.argv = ["pip", "install", *(a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel"))]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
'''
ANSIBLE_TEST_HOME = TOP / ".cache" / "ansible-test-home"


@pytest.mark.slow
def test_collection_passes_ansible_test_sanity() -> None:
    """Every sanity test ansible-test runs without a container (its default set), in the collection's own
    folder (ansible_collections/lulayer/lulayer). Needs PyPI the first time (the tools' pinned versions)."""
    cache = ANSIBLE_TEST_HOME / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for version in ("24_2", "25_1", "25_2"):
        (cache / f"get_pip_{version}.py").write_text(GET_PIP)
    env = dict(os.environ, HOME=str(ANSIBLE_TEST_HOME), LC_ALL="C.UTF-8", PATH=f"{BIN}:/usr/bin:/bin")
    proc = subprocess.run([str(BIN / "ansible-test"), "sanity", "--local", "--python", "3.11", "--color", "no"],
                          cwd=COLLECTION, capture_output=True, text=True, env=env, timeout=1800, check=False)
    assert proc.returncode == 0, describe(proc)
    ran = [line for line in proc.stdout.splitlines() if line.startswith("Running sanity test")]
    assert any('"validate-modules"' in line for line in ran) and any('"pylint"' in line for line in ran), ran
