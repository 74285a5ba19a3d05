"""The resolver on libdnf5 (python3-libdnf5): Fedora 41 and later.

No Debian release packages libdnf5, so on the project's machines this backend
does not import and its contract tests skip with that reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libdnf5
import rpm

from lulayer.errors import ResolveError
from lulayer.layering.resolver import (
    LOCAL_REPO_ID,
    Backend,
    RepoConfig,
    RepoConfigTree,
    Resolution,
    ResolvedPackage,
    ResolveRequest,
    check_repo_files,
    check_repos,
    check_spec,
    check_transaction,
    depsolve_error,
    download_error,
    invalid_repo_config,
    metadata_error,
    no_match_in_repo,
)
from lulayer.layering.verify import file_digest, verify_downloads
from lulayer.progress import Progress, ProgressReport
from lulayer.rpmdb.model import Package


def _package(p: Any) -> Package:
    return Package(p.get_name(), int(p.get_epoch() or 0), p.get_version(), p.get_release(), p.get_arch())


def _checksum(p: Any) -> str:
    c = p.get_checksum()
    return f"{c.get_type_str()}:{c.get_checksum()}"


class _LogRecords(libdnf5.logger.Logger):  # type: ignore[misc]
    """What libdnf5 logs as a warning or worse while it is being listened to."""

    def __init__(self) -> None:
        super().__init__()
        self.listening = False
        self.messages: list[str] = []

    def write(self, time: Any, pid: int, level: int, message: str) -> None:
        if self.listening and level <= libdnf5.logger.Logger.Level_WARNING:
            self.messages.append(message)


class _DownloadProgress(libdnf5.repo.DownloadCallbacks):  # type: ignore[misc]
    """libdnf5's per-package callbacks, summed into one report: packages and bytes done of all."""

    def __init__(self, progress: Progress, files: int, size: int) -> None:
        super().__init__()
        self._progress = progress
        self._files, self._size = files, size
        self._downloads: list[tuple[str, int]] = []  # (description, total bytes); the index is libdnf5's handle
        self._bytes: dict[int, int] = {}
        self._finished = 0

    def add_new_download(self, user_data: int, description: str, total_to_download: float) -> int:
        self._downloads.append((description, int(total_to_download)))
        return len(self._downloads) - 1

    def progress(self, user_cb_data: int, total_to_download: float, downloaded: float) -> int:
        self._bytes[user_cb_data] = int(downloaded)
        self._report(user_cb_data)
        return 0

    def end(self, user_cb_data: int, status: int, msg: str | None) -> int:
        if status != libdnf5.repo.DownloadCallbacks.TransferStatus_ERROR:
            self._bytes[user_cb_data] = self._downloads[user_cb_data][1]
            self._finished += 1
            self._report(user_cb_data)
        return 0

    def _report(self, handle: int) -> None:
        self._progress(ProgressReport("Downloading packages", self._finished, self._files,
                                      sum(self._bytes.values()), self._size, self._downloads[handle][0]))


class Dnf5Resolver:
    backend = Backend.DNF5

    def __init__(self) -> None:
        self._base: Any = None
        self._packages: list[Any] = []
        # libdnf5 calls these Python objects back for as long as the base lives: keep them with it.
        self._listeners: list[Any] = []

    def resolve(self, request: ResolveRequest) -> Resolution:
        base = libdnf5.base.Base()
        log_records = _LogRecords()
        base.get_logger().add_logger(libdnf5.logger.LoggerUniquePtr(log_records))
        self._listeners.append(log_records)
        conf = base.get_config()
        cache = request.cache_dir / "dnf5"
        conf.installroot = str(request.installed_root)
        conf.cachedir = str(cache / "cache")
        conf.system_cachedir = str(cache / "cache")
        conf.persistdir = str(cache / "persist")
        conf.system_state_dir = str(cache / "state")
        conf.plugins = False  # the host's libdnf5 plugins have no say in the tree's image
        conf.install_weak_deps = False
        conf.pkg_gpgcheck = False  # checked by verify_downloads, with the tree's keys
        # Set at runtime priority, above the command line's: Base.setup() neither prefixes the
        # installroot (the rpmdb snapshot) to these nor loads vars from it.
        conf.reposdir = [str(request.repos.path(d)) for d in conf.reposdir]
        conf.varsdir = [str(request.repos.path(d)) for d in conf.varsdir]
        base.get_vars().set("releasever", request.releasever)
        base.setup()
        sack = base.get_repo_sack()
        repos = _read_repos(base, request.repos, log_records)
        rpm.addMacro("_dbpath", str(request.dbpath))
        try:
            try:
                sack.load_repos()
            except Exception as e:  # libdnf5 raises its own RuntimeError subclasses
                raise metadata_error(e) from e
            installed_q = libdnf5.rpm.PackageQuery(base)
            installed_q.filter_installed()
            installed = {p.get_name() for p in installed_q}
            gone = _keep_offered(base, request.keep)
            goal = libdnf5.base.Goal(base)
            files = [str(p) for p in request.local_files]
            for _path, local in base.get_repo_sack().add_cmdline_packages(files).items():
                goal.add_rpm_install(local)
            if request.exclude:  # removed from the base: nothing brings them back
                excluded = libdnf5.rpm.PackageQuery(base)
                excluded.filter_available()
                excluded.filter_name(list(request.exclude))
                base.get_rpm_package_sack().add_user_excludes(excluded)
            for repo_id, name in request.replace:
                offered = libdnf5.rpm.PackageQuery(base)
                offered.filter_available()
                offered.filter_name([name])
                offered.filter_repo_id([repo_id])
                offered.filter_latest_evr()
                if offered.empty():
                    raise no_match_in_repo(name, repo_id)
                goal.add_rpm_install(offered)
            for spec in request.install:
                matched = libdnf5.rpm.PackageQuery(base)
                matched.filter_available()
                matched.resolve_pkg_spec(spec, libdnf5.base.ResolveSpecSettings(), False)
                check_spec(spec, {p.get_name() for p in matched}, installed)
                goal.add_rpm_install(spec)
            trans = goal.resolve()
            if trans.get_problems() != libdnf5.base.GoalProblem_NO_PROBLEM:
                raise depsolve_error(" ".join(trans.get_resolve_logs_as_strings()))
            inbound: list[Any] = []
            outbound: list[Any] = []
            for tp in trans.get_transaction_packages():
                is_inbound = libdnf5.base.transaction.transaction_item_action_is_inbound(tp.get_action())
                (inbound if is_inbound else outbound).append(tp.get_package())
            check_transaction(installed, [_package(p) for p in outbound], [_package(p) for p in inbound],
                              request.replaced_names)
        finally:
            rpm.delMacro("_dbpath")
        self._base, self._packages = base, inbound
        resolved = tuple(
            ResolvedPackage(_package(p), p.get_repo_id(), p.get_location(),
                            _checksum(p) if p.get_repo_id() != LOCAL_REPO_ID else
                            f"sha256:{file_digest(Path(p.get_package_path()), 'sha256')}")
            for p in inbound
        )
        return Resolution(install=tuple(sorted(resolved, key=lambda r: r.package)), repos=repos, gone=gone)

    def download(self, resolution: Resolution, progress: Progress | None = None) -> tuple[Path, ...]:
        if self._base is None:
            raise ResolveError("download() needs a resolve() first")
        if progress is not None:
            size = sum(int(p.get_download_size()) for p in self._packages)
            callbacks = _DownloadProgress(progress, len(self._packages), size)
            self._listeners.append(callbacks)
            self._base.set_download_callbacks(libdnf5.repo.DownloadCallbacksUniquePtr(callbacks))
        downloader = libdnf5.repo.PackageDownloader(self._base)
        for p in self._packages:
            downloader.add(p)
        try:
            downloader.download()
        except Exception as e:
            raise download_error(e) from e
        by_nevra = {str(_package(p)): Path(p.get_package_path()) for p in self._packages}
        paths = tuple(by_nevra[str(r.package)] for r in resolution.install)
        verify_downloads(resolution, paths)
        return paths


def _keep_offered(base: Any, keep: tuple[Package, ...]) -> tuple[Package, ...]:
    """Exclude the other builds of each package of keep that the repositories still offer; return
    those they do not offer (the resolver picks what it finds for them)."""
    gone = []
    for p in keep:
        same_name = libdnf5.rpm.PackageQuery(base)
        same_name.filter_available()
        same_name.filter_name([p.name])
        same_name.filter_arch([p.arch])
        offered = libdnf5.rpm.PackageQuery(same_name)
        offered.filter_nevra([p.nevra])
        if offered.empty():
            gone.append(p)
            continue
        same_name.difference(offered)
        base.get_rpm_package_sack().add_user_excludes(same_name)
    return tuple(gone)


def _read_repos(base: Any, tree: RepoConfigTree, log_records: _LogRecords) -> tuple[RepoConfig, ...]:
    """Read the configured reposdirs (in tree) into base, as `dnf5 --installroot=TREE` does, and report the
    enabled repositories; refuse a configuration libdnf5 read only in part or that names no source."""
    sack = base.get_repo_sack()
    sections: dict[str, list[str]] = {}
    for reposdir in base.get_config().reposdir:
        for path in sorted(Path(reposdir).glob("*.repo")):
            parser = libdnf5.conf.ConfigParser()
            try:
                parser.read(str(path))
            except Exception as e:  # libdnf5's ConfigParserError and its kin
                raise invalid_repo_config(e) from e
            sections[str(path)] = [base.get_vars().substitute(s) for s in parser.get_data() if s != "main"]
    log_records.listening = True
    try:
        sack.create_repos_from_reposdir()
    except Exception as e:  # an id libdnf5 refuses
        raise invalid_repo_config(e) from e
    finally:
        log_records.listening = False
    # libdnf5 logs an invalid value (which it ignores) as a warning, a repeated id as an error.
    everything = libdnf5.repo.RepoQuery(base)
    check_repo_files(sections, {r.get_id() for r in everything}, errors=log_records.messages)
    enabled = libdnf5.repo.RepoQuery(base)
    enabled.filter_enabled(True)
    enabled.filter_type(libdnf5.repo.Repo.Type_AVAILABLE)
    repos = []
    for repo in sorted(enabled, key=lambda r: r.get_id()):
        rc = repo.get_config()
        # Also for repo_gpgcheck, which libdnf5 does itself.
        rc.gpgkey = [tree.key_url(url) for url in rc.gpgkey]
        repos.append(RepoConfig(
            id=repo.get_id(), repofile=repo.get_repo_file_path(), baseurls=tuple(rc.baseurl),
            metalink=rc.metalink or None, mirrorlist=rc.mirrorlist or None, gpgcheck=bool(rc.pkg_gpgcheck),
            gpgkeys=tuple(rc.gpgkey),
        ))
    check_repos(tree, repos)
    return tuple(repos)
