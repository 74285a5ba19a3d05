"""The resolver's helper process (layering/resolver_worker.py), which the layering commands start first.

The resolver contract (test_resolver_contract.py) runs through it as well; here, what only a
helper process can do: die, fail in a way no backend would, be stopped with the command.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from fixtures import build as fixture_build
from lulayer.errors import ResolveError
from lulayer.layering.resolver import Backend, RepoConfigTree, ResolveRequest, available_backends
from lulayer.layering.resolver_worker import ResolverWorker
from lulayer.mounts import mount, unshare_mount_namespace
from lulayer.rpmdb.db import snapshot, tree_dbpath
from lulayer.run import ChildFailed
from tests.helpers import (
    QuietHandler,
    booted,
    describe,
    lulayer,
    served_over_http,
    spawn_lulayer,
    wait_for_child,
)
from tests.test_signals import assert_stopped_unchanged

pytestmark = pytest.mark.root

HELPER = "lulayer-resolve"
deployments = fixture_build.deployments


def _request(tmp_path: Path) -> ResolveRequest:
    """A request the helper never gets to resolve (it is dead, or cannot resolve at all)."""
    root = fixture_build.booted_deployment(fixture_build.sysroot_template())
    return ResolveRequest(installed_root=root, dbpath=PurePosixPath(tree_dbpath(root)), repos=RepoConfigTree(root),
                          cache_dir=tmp_path / "cache", releasever="41", install=("htop",))


def _helpers() -> set[int]:
    """The pids of every process named as the helper."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if Path(entry.path, "comm").read_text().strip() == HELPER:
                    found.add(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def worker() -> Iterator[ResolverWorker]:
    w = ResolverWorker.start()
    try:
        yield w
    finally:
        w.close()


def test_a_helper_that_was_killed_is_a_resolve_error_naming_the_signal(worker: ResolverWorker,
                                                                        tmp_path: Path) -> None:
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(ResolveError, match=r"the resolver process ended during resolve \(killed by SIGKILL\)"):
        worker.resolve(_request(tmp_path))
    assert not Path(f"/proc/{worker.pid}").exists(), "the dead helper was not reaped"
    worker.close()  # reaped already: nothing is signalled again


def test_an_error_no_backend_raises_arrives_with_the_helpers_traceback(worker: ResolverWorker) -> None:
    with pytest.raises(ChildFailed, match=r"(?s)Traceback.*AttributeError"):
        worker.resolve("not a request")  # type: ignore[arg-type]
    assert worker.backend is Backend.DNF or worker.backend is Backend.DNF5, "the helper went on serving"


def test_a_backend_that_does_not_import_is_reported_at_the_first_call(tmp_path: Path) -> None:
    if available_backends()[Backend.DNF5] is None:
        pytest.skip("libdnf5 imports here")
    w = ResolverWorker.start(Backend.DNF5)
    try:
        with pytest.raises(ResolveError, match="no resolver is available: libdnf5 does not import"):
            w.resolve(_request(tmp_path))
    finally:
        w.close()
    assert w.pid not in _helpers()


def test_a_layering_command_leaves_no_helper_behind(sysroot: Path) -> None:
    before = _helpers()
    lulayer(sysroot, "install", "htop")
    failed = lulayer(sysroot, "install", "no-such-package", check=False)
    assert failed.returncode == 1 and "no-such-package" in failed.stderr, describe(failed)
    assert _helpers() <= before


class _SlowPackages(QuietHandler):
    """The repository: metadata at once; a package only after a minute, once `marker` is made."""

    marker: Path

    def do_GET(self) -> None:
        if self.path.endswith(".rpm"):
            self.marker.touch()
            time.sleep(60)
        super().do_GET()


@pytest.fixture
def slow_repo(fixture_repo: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The fixture repository over HTTP, whose packages never come in time; and the file that
    appears once one is asked for."""
    marker = tmp_path / "package-requested"
    with served_over_http(fixture_repo, type("Handler", (_SlowPackages,), {"marker": marker})) as url:
        yield url, marker


def test_the_helper_downloads_where_the_command_sees_its_cache_after_moving_mount_namespace(
        fixture_repo: Path, tmp_path: Path) -> None:
    """On a booted host the command moves to a mount namespace of its own after the helper is
    forked (/sysroot is writable only there): the helper's downloads land in that namespace."""
    cache = tmp_path / "cache"
    cache.mkdir()
    root = fixture_build.booted_deployment(fixture_build.sysroot_template())
    dbpath = tree_dbpath(root)
    with served_over_http(fixture_repo) as url:
        pid = os.fork()
        if pid == 0:  # the command: the helper, then a namespace in which cache is another file system
            code = 1
            try:
                w = ResolverWorker.start()
                try:
                    unshare_mount_namespace()
                    mount("tmpfs", cache, "tmpfs")
                    repos = tmp_path / "repos"
                    (repos / "etc/yum.repos.d").mkdir(parents=True)
                    (repos / "etc/yum.repos.d/served.repo").write_text(
                        f"[served]\nname=served\nbaseurl={url}\nenabled=1\ngpgcheck=0\n")
                    with snapshot(root / str(dbpath).lstrip("/"), dbpath) as installed:
                        request = ResolveRequest(installed_root=installed, dbpath=dbpath,
                                                 repos=RepoConfigTree(repos), cache_dir=cache, releasever="41",
                                                 install=("htop",))
                        paths = w.download(w.resolve(request))
                    code = 0 if paths and all(p.is_file() and p.is_relative_to(cache) for p in paths) else 2
                finally:
                    w.close()
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the packages are not in the cache the command sees"
    assert not any(cache.iterdir()), "the helper wrote under the command's mount, in the namespace it was forked in"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_while_the_helper_downloads_stops_the_command_and_the_helper(
        sysroot: Path, tmp_path: Path, slow_repo: tuple[str, Path], sig: signal.Signals) -> None:
    """Sent to the command's process group, as a terminal does (the helper leads a group of its
    own and never gets it): the command kills the helper, says it stopped, and nothing changed."""
    url, marker = slow_repo
    repo_file = booted(sysroot) / fixture_build.REPO_FILE
    repo_file.write_text("".join(f"baseurl={url}\n" if ln.startswith("baseurl=") else ln + "\n"
                                 for ln in repo_file.read_text().splitlines()))
    before = deployments(sysroot)
    log = tmp_path / "out.log"
    proc = spawn_lulayer(sysroot, ["install", "htop", "--live"], log)
    helper = wait_for_child(proc, HELPER)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    os.killpg(proc.pid, sig)
    rc = proc.wait(timeout=30)

    assert_stopped_unchanged(sysroot, tmp_path, rc, log.read_text(), sig, before, helper, "while the helper downloads")
