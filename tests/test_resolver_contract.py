"""The resolver contract, run against every backend of lulayer.layering.resolver.Backend.

Each backend that imports (available_backends()) resolves against the real fixture
repository with the real base rpmdb (a private copy of the fixture sysroot's); a
backend that does not import is skipped with the reason available_backends() gives
(Debian packages no libdnf5).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from fixtures import build as fixtures_build
from lulayer.errors import ResolveError
from lulayer.layering.resolver import (
    Backend,
    RepoConfigTree,
    Resolution,
    Resolver,
    ResolveRequest,
    available_backends,
    make_resolver,
)
from lulayer.layering.resolver_worker import ResolverWorker
from lulayer.progress import ProgressReport
from lulayer.rpmdb.db import snapshot, tree_dbpath
from tests.helpers import served_over_http

pytestmark = pytest.mark.root


@pytest.fixture(params=[(b, worker) for b in Backend for worker in (False, True)],
                ids=[f"{b.value}{'-worker' if worker else ''}" for b in Backend for worker in (False, True)])
def resolver(request: pytest.FixtureRequest) -> Iterator[Resolver]:
    """Each backend, in this process and in the helper process the CLI's layering commands use."""
    backend, worker = request.param
    reason = available_backends()[backend]
    if reason is not None:
        pytest.skip(reason)
    if not worker:
        r = make_resolver(backend)
        assert r.backend is backend
        yield r
        return
    w = ResolverWorker.start(backend)
    try:
        assert w.backend is backend
        assert w.pid != os.getpid() and _comm(w.pid) == "lulayer-resolve"
        yield w
    finally:
        w.close()
    assert not Path(f"/proc/{w.pid}").exists() or _comm(w.pid) != "lulayer-resolve", "the helper outlived close()"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


@pytest.fixture
def base_root() -> Iterator[tuple[Path, PurePosixPath]]:
    """A private root with a copy of the fixture base image's rpmdb, and its dbpath."""
    template = fixtures_build.sysroot_template()
    deployment = fixtures_build.booted_deployment(template)
    dbpath = tree_dbpath(deployment)
    with snapshot(deployment / str(dbpath).lstrip("/"), dbpath) as root:
        yield root, dbpath


@pytest.fixture
def served_repo(fixture_repo: Path) -> Iterator[str]:
    """The fixture repository over HTTP (a real download, not a file:// one that dnf uses in place)."""
    with served_over_http(fixture_repo) as url:
        yield url


def request_for(base_root: tuple[Path, PurePosixPath], repo: Path | str, cache: Path, *names: str) -> ResolveRequest:
    """A request against a tree whose /etc/yum.repos.d names only REPO (a folder or a URL)."""
    root, dbpath = base_root
    if isinstance(repo, Path):
        repo = f"file://{repo}"
    tree = cache.parent / "tree"
    repo_file = tree / fixtures_build.REPO_FILE
    repo_file.parent.mkdir(parents=True, exist_ok=True)
    repo_file.write_text(f"[{fixtures_build.REPO_ID}]\nname=lulayer fixtures\nbaseurl={repo}\n")
    return ResolveRequest(
        installed_root=root, dbpath=dbpath, cache_dir=cache, releasever="41", install=names,
        repos=RepoConfigTree(tree),
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resolving_htop_gives_htop_and_its_dependency(resolver: Resolver, base_root: tuple[Path, PurePosixPath],
                                                      fixture_repo: Path, tmp_path: Path) -> None:
    resolution = resolver.resolve(request_for(base_root, fixture_repo, tmp_path / "cache", "htop"))
    assert isinstance(resolution, Resolution)
    by_name = {r.package.name: r for r in resolution.install}
    assert sorted(by_name) == ["htop", "ncurses-libs"]
    assert by_name["htop"].package.nevra == "htop-3.3.0-1.fc41.x86_64"
    assert by_name["ncurses-libs"].package.nevra == "ncurses-libs-6.4-1.fc41.x86_64"
    for r in resolution.install:
        assert r.repo_id == fixtures_build.REPO_ID
        rpm_file = fixture_repo / r.location
        assert rpm_file.is_file(), r.location
        assert rpm_file.name == f"{r.package.nevra}.rpm"
        kind, _, digest = r.checksum.partition(":")
        assert kind == "sha256"
        assert digest == sha256(rpm_file)


def test_download_returns_files_matching_the_metadata(resolver: Resolver, base_root: tuple[Path, PurePosixPath],
                                                      fixture_repo: Path, tmp_path: Path) -> None:
    resolution = resolver.resolve(request_for(base_root, fixture_repo, tmp_path / "cache", "htop"))
    paths = resolver.download(resolution)
    assert len(paths) == len(resolution.install)
    for r, path in zip(resolution.install, paths, strict=True):
        assert Path(path).is_file()
        assert r.checksum == f"sha256:{sha256(Path(path))}"
        assert Path(path).name == f"{r.package.nevra}.rpm"


def test_download_reports_progress_to_the_end_of_each_package(resolver: Resolver,
                                                              base_root: tuple[Path, PurePosixPath],
                                                              served_repo: str, tmp_path: Path) -> None:
    resolution = resolver.resolve(request_for(base_root, served_repo, tmp_path / "cache", "htop"))
    reports: list[ProgressReport] = []
    paths = resolver.download(resolution, reports.append)
    for r, path in zip(resolution.install, paths, strict=True):
        assert r.checksum == f"sha256:{sha256(Path(path))}"
        assert any(r.package.name in report.item for report in reports), reports
    sizes = sum(Path(path).stat().st_size for path in paths)
    last = reports[-1]
    assert (last.done, last.total) == (len(paths), len(paths)), reports
    assert last.done_bytes == sizes, reports
    assert [rep.done_bytes for rep in reports] == sorted(rep.done_bytes for rep in reports), "bytes never go back"


def test_unknown_name_raises_resolve_error(resolver: Resolver, base_root: tuple[Path, PurePosixPath],
                                           fixture_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ResolveError, match="no-such-package"):
        resolver.resolve(request_for(base_root, fixture_repo, tmp_path / "cache", "no-such-package"))


def test_unsatisfiable_dependency_raises_resolve_error(resolver: Resolver, base_root: tuple[Path, PurePosixPath],
                                                       fixture_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ResolveError, match="no-such-capability"):
        resolver.resolve(request_for(base_root, fixture_repo, tmp_path / "cache", "needs-missing"))


def test_resolution_names_the_enabled_repositories(resolver: Resolver, base_root: tuple[Path, PurePosixPath],
                                                   fixture_repo: Path, tmp_path: Path) -> None:
    resolution = resolver.resolve(request_for(base_root, fixture_repo, tmp_path / "cache", "htop"))
    assert [(r.id, r.baseurls, r.gpgcheck) for r in resolution.repos] == [
        (fixtures_build.REPO_ID, (f"file://{fixture_repo}",), False)]


def test_package_of_the_base_raises_resolve_error(resolver: Resolver, base_root: tuple[Path, PurePosixPath],
                                                  tmp_path: Path) -> None:
    repo = fixtures_build.make_repo(tmp_path / "repo", [fixtures_build.rpm_path("busybox")])
    with pytest.raises(ResolveError, match="'busybox' is already in the base image"):
        resolver.resolve(request_for(base_root, repo, tmp_path / "cache", "busybox"))


def test_every_backend_is_reported() -> None:
    reasons = available_backends()
    assert set(reasons) == set(Backend)
    assert any(r is None for r in reasons.values()), f"no backend imports: {reasons}"
