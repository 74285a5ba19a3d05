"""The resolver on python3-dnf (libdnf/libsolv): what Debian and older Fedora have."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import dnf
import dnf.callback
import dnf.exceptions
import dnf.subject
import hawkey
import rpm

from lulayer.errors import ResolveError
from lulayer.layering.resolver import Backend, Resolution, ResolvedPackage, ResolveRequest
from lulayer.layering.verify import verify_downloads
from lulayer.progress import Progress, ProgressReport
from lulayer.rpmdb.model import Package

log = logging.getLogger(__name__)


class _DownloadProgress(dnf.callback.DownloadProgress):  # type: ignore[misc]
    """dnf's per-package callbacks, summed into one report: packages and bytes done of all."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self._progress = progress
        self._bytes: dict[str, int] = {}
        self._finished = 0
        self._files = 0
        self._size = 0

    def start(self, total_files: int, total_size: int, total_drpms: int = 0) -> None:
        self._files, self._size = total_files, total_size
        if total_files:
            self._report("")

    def progress(self, payload: Any, done: int) -> None:
        self._bytes[str(payload)] = done
        self._report(str(payload))

    def end(self, payload: Any, status: int, msg: str) -> None:
        self._bytes[str(payload)] = int(payload.download_size or 0)
        self._finished += 1
        self._report(str(payload))

    def _report(self, item: str) -> None:
        self._progress(ProgressReport("Downloading packages", self._finished, self._files,
                                      sum(self._bytes.values()), self._size, item))


def _package(p: Any) -> Package:
    return Package(p.name, int(p.epoch or 0), p.version, p.release, p.arch)


class DnfResolver:
    backend = Backend.DNF

    def __init__(self) -> None:
        self._base: Any = None
        self._request: ResolveRequest | None = None

    def _make_base(self, request: ResolveRequest) -> Any:
        base = dnf.Base()
        conf = base.conf
        cache = request.cache_dir / "dnf"
        for sub in ("cache", "persist", "log"):
            (cache / sub).mkdir(parents=True, exist_ok=True)
        conf.installroot = str(request.installed_root)
        conf.cachedir = str(cache / "cache")
        conf.persistdir = str(cache / "persist")
        conf.logdir = str(cache / "log")
        conf.reposdir = []
        conf.substitutions["releasever"] = request.releasever
        conf.assumeyes = True
        conf.install_weak_deps = False
        conf.gpgcheck = False  # signatures are checked by verify_downloads, with the tree's keys
        for r in request.repos:
            repo = base.repos.add_new_repo(r.id, conf, baseurl=list(r.baseurls))
            repo.name = r.name
            if r.metalink:
                repo.metalink = r.metalink
            if r.mirrorlist:
                repo.mirrorlist = r.mirrorlist
            repo.skip_if_unavailable = False
        return base

    def resolve(self, request: ResolveRequest) -> Resolution:
        base = self._make_base(request)
        # dnf.Base() reloads rpm's configuration: point %_dbpath at the tree only now.
        rpm.addMacro("_dbpath", str(request.dbpath))
        try:
            try:
                base.fill_sack(load_system_repo=True, load_available_repos=True)
            except dnf.exceptions.RepoError as e:
                raise ResolveError(f"cannot load repository metadata: {_first_line(e)}",
                                   hint="check the baseurl in /etc/yum.repos.d and that it is reachable") from e
            installed = {p.name for p in base.sack.query().installed()}
            for spec in request.install:
                subj = dnf.subject.Subject(spec)
                q = subj.get_best_query(base.sack, with_provides=True).available()
                if not q:
                    raise ResolveError(f"no package matches {spec!r} in the enabled repositories",
                                       hint="check the name with `dnf --installroot=... list` or the repository")
                names = {p.name for p in q}
                if names <= installed:
                    raise ResolveError(f"{spec!r} is already in the base image",
                                       hint="only packages the base lacks can be layered")
                try:
                    base.install(spec)
                except dnf.exceptions.MarkingError as e:
                    raise ResolveError(f"cannot select {spec!r}: {_first_line(e)}") from e
            try:
                base.resolve(allow_erasing=False)
            except dnf.exceptions.DepsolveError as e:
                raise ResolveError(f"dependencies cannot be satisfied: {_first_line(e)}",
                                   hint="the repository lacks what the package requires") from e
            trans = base.transaction
            touched = [_package(p) for p in trans.remove_set]
            touched += [_package(p) for p in trans.install_set if p.name in installed]
            if touched:
                raise ResolveError(
                    "layering would replace base packages: " + ", ".join(str(p) for p in touched),
                    hint="replacing base packages is not supported",
                )
            resolved = tuple(
                ResolvedPackage(
                    package=_package(p),
                    repo_id=p.reponame,
                    location=p.location,
                    checksum=_hawkey_chksum(p),
                )
                for p in trans.install_set
            )
        finally:
            rpm.delMacro("_dbpath")
        self._base = base
        self._request = request
        return Resolution(install=tuple(sorted(resolved, key=lambda r: r.package)))

    def download(self, resolution: Resolution, progress: Progress | None = None) -> tuple[Path, ...]:
        if self._base is None or self._request is None:
            raise ResolveError("download() needs a resolve() first")
        base = self._base
        pkgs = list(base.transaction.install_set)
        try:
            base.download_packages(pkgs, _DownloadProgress(progress) if progress else None)
        except dnf.exceptions.DownloadError as e:
            raise ResolveError(f"cannot download packages: {_first_line(e)}",
                               hint="check that the repository is reachable and retry") from e
        except dnf.exceptions.Error as e:
            # dnf checks the packages of local (file://) repositories itself and raises a
            # plain Error naming none of them: name the one that differs, as for a download.
            if all(p._is_local_pkg() for p in pkgs):
                local = tuple(Path(p.localPkg()) for p in _ordered(pkgs, resolution))
                for path in local:
                    if not path.is_file():
                        raise ResolveError(f"{path} is missing from its repository",
                                           hint="the repository metadata lists a package file that is gone: "
                                                "regenerate or fix the repository") from e
                verify_downloads(resolution, local, self._request.repos)
            raise ResolveError(f"cannot use the downloaded packages: {_first_line(e)}",
                               hint="the repository or the cache is corrupt: run `lulayer cleanup --repomd` "
                                    "or fix the repository") from e
        by_nevra = {str(_package(p)): Path(p.localPkg()) for p in pkgs}
        paths = tuple(by_nevra[str(r.package)] for r in resolution.install)
        verify_downloads(resolution, paths, self._request.repos)
        return paths


def _ordered(pkgs: list[Any], resolution: Resolution) -> list[Any]:
    """PKGS in the order of resolution.install."""
    by_nevra = {str(_package(p)): p for p in pkgs}
    return [by_nevra[str(r.package)] for r in resolution.install]


def _hawkey_chksum(p: Any) -> str:
    kind, value = p.chksum
    return f"{hawkey.chksum_name(kind)}:{value.hex()}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


def _quiet_dnf() -> None:
    # dnf logs to stderr at import in some versions; lulayer prints its own lines.
    logging.getLogger("dnf").setLevel(logging.CRITICAL)
    if not sys.stderr.isatty():
        logging.getLogger("dnf").propagate = False
        # Without a handler of its own, logging's last-resort handler would still print
        # dnf's critical records (e.g. "Package ... has incorrect checksum") to stderr.
        logging.getLogger("dnf").addHandler(logging.NullHandler())


_quiet_dnf()
