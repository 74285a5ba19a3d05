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
from lulayer.layering.resolver import Backend, Resolution, ResolvedPackage, ResolveRequest
from lulayer.layering.verify import verify_downloads
from lulayer.progress import Progress, ProgressReport
from lulayer.rpmdb.model import Package


def _package(p: Any) -> Package:
    return Package(p.get_name(), int(p.get_epoch() or 0), p.get_version(), p.get_release(), p.get_arch())


def _checksum(p: Any) -> str:
    c = p.get_checksum()
    return f"{c.get_type_str()}:{c.get_checksum()}"


class Dnf5Resolver:
    backend = Backend.DNF5

    def __init__(self) -> None:
        self._base: Any = None
        self._request: ResolveRequest | None = None
        self._packages: list[Any] = []

    def resolve(self, request: ResolveRequest) -> Resolution:
        base = libdnf5.base.Base()
        conf = base.get_config()
        cache = request.cache_dir / "dnf5"
        conf.config_file_path = "/dev/null"
        conf.installroot = str(request.installed_root)
        conf.cachedir = str(cache / "cache")
        conf.system_cachedir = str(cache / "cache")
        conf.persistdir = str(cache / "persist")
        conf.system_state_dir = str(cache / "state")
        conf.reposdir = []
        conf.install_weak_deps = False
        conf.pkg_gpgcheck = False  # checked by verify_downloads, with the tree's keys
        base.get_vars().set("releasever", request.releasever)
        base.setup()
        sack = base.get_repo_sack()
        for r in request.repos:
            repo = sack.create_repo(r.id)
            rc = repo.get_config()
            rc.name = r.name
            if r.baseurls:
                rc.baseurl = list(r.baseurls)
            if r.metalink:
                rc.metalink = r.metalink
            if r.mirrorlist:
                rc.mirrorlist = r.mirrorlist
            rc.skip_if_unavailable = False
        rpm.addMacro("_dbpath", str(request.dbpath))
        try:
            try:
                sack.load_repos()
            except Exception as e:  # libdnf5 raises its own RuntimeError subclasses
                raise ResolveError(f"cannot load repository metadata: {' '.join(str(e).split())}",
                                   hint="check the baseurl in /etc/yum.repos.d and that it is reachable") from e
            installed_q = libdnf5.rpm.PackageQuery(base)
            installed_q.filter_installed()
            installed = {p.get_name() for p in installed_q}
            goal = libdnf5.base.Goal(base)
            for spec in request.install:
                q = libdnf5.rpm.PackageQuery(base)
                q.filter_available()
                q.resolve_pkg_spec(spec, libdnf5.base.ResolveSpecSettings(), False)
                names = {p.get_name() for p in q}
                if not names:
                    raise ResolveError(f"no package matches {spec!r} in the enabled repositories",
                                       hint="check the name and the repository")
                if names <= installed:
                    raise ResolveError(f"{spec!r} is already in the base image",
                                       hint="only packages the base lacks can be layered")
                goal.add_rpm_install(spec)
            trans = goal.resolve()
            if trans.get_problems() != libdnf5.base.GoalProblem_NO_PROBLEM:
                logs = " ".join(" ".join(trans.get_resolve_logs_as_strings()).split())
                raise ResolveError(f"dependencies cannot be satisfied: {logs}",
                                   hint="the repository lacks what the package requires")
            inbound: list[Any] = []
            touched: list[Package] = []
            for tp in trans.get_transaction_packages():
                pkg = tp.get_package()
                if libdnf5.base.transaction.transaction_item_action_is_inbound(tp.get_action()):
                    inbound.append(pkg)
                    if pkg.get_name() in installed:
                        touched.append(_package(pkg))
                else:
                    touched.append(_package(pkg))
            if touched:
                raise ResolveError(
                    "layering would replace base packages: " + ", ".join(str(p) for p in touched),
                    hint="replacing base packages is not supported",
                )
        finally:
            rpm.delMacro("_dbpath")
        self._base, self._request, self._packages = base, request, inbound
        resolved = tuple(
            ResolvedPackage(_package(p), p.get_repo_id(), p.get_location(), _checksum(p)) for p in inbound
        )
        return Resolution(install=tuple(sorted(resolved, key=lambda r: r.package)))

    def download(self, resolution: Resolution, progress: Progress | None = None) -> tuple[Path, ...]:
        if self._base is None or self._request is None:
            raise ResolveError("download() needs a resolve() first")
        downloader = libdnf5.repo.PackageDownloader(self._base)
        for p in self._packages:
            downloader.add(p)
        # Reported per batch: libdnf5's per-package callbacks are not wired here.
        size = sum(int(p.get_download_size()) for p in self._packages)
        if progress:
            progress(ProgressReport("Downloading packages", 0, len(self._packages), 0, size))
        try:
            downloader.download()
        except Exception as e:
            raise ResolveError(f"cannot download packages: {' '.join(str(e).split())}",
                               hint="check that the repository is reachable and retry") from e
        if progress:
            progress(ProgressReport("Downloading packages", len(self._packages), len(self._packages), size, size))
        by_nevra = {str(_package(p)): Path(p.get_package_path()) for p in self._packages}
        paths = tuple(by_nevra[str(r.package)] for r in resolution.install)
        verify_downloads(resolution, paths, self._request.repos)
        return paths
