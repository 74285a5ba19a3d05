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
    Backend,
    Progress,
    Resolution,
    ResolvedPackage,
    ResolveRequest,
    check_spec,
    check_transaction,
    depsolve_error,
    download_error,
    metadata_error,
)
from lulayer.layering.verify import verify_downloads
from lulayer.rpmdb.db import Package


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
                raise metadata_error(e) from e
            installed_q = libdnf5.rpm.PackageQuery(base)
            installed_q.filter_installed()
            installed = {p.get_name() for p in installed_q}
            goal = libdnf5.base.Goal(base)
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
            check_transaction(installed, [_package(p) for p in outbound], [_package(p) for p in inbound])
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
        try:
            downloader.download()
        except Exception as e:
            raise download_error(e) from e
        by_nevra = {str(_package(p)): Path(p.get_package_path()) for p in self._packages}
        paths = tuple(by_nevra[str(r.package)] for r in resolution.install)
        verify_downloads(resolution, paths, self._request.repos)
        return paths
