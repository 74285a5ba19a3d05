"""The resolver on python3-dnf (libdnf/libsolv): what Debian and older Fedora have."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dnf
import dnf.callback
import dnf.exceptions
import dnf.selector
import dnf.subject
import hawkey
import libdnf.conf  # type: ignore[import-untyped]
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
    one_line,
)
from lulayer.layering.verify import file_digest, verify_downloads
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


def _fill_sack(base: Any) -> None:
    """base.fill_sack, without the cost of its full garbage collection (Base.reset, dnf/base.py,
    which frees a sack it replaces): what is alive before is this process's modules and state,
    which that need not scan (11-17 ms of `install htop --live`)."""
    gc.freeze()
    try:
        base.fill_sack(load_system_repo=True, load_available_repos=True)
    finally:
        gc.unfreeze()


class DnfResolver:
    backend = Backend.DNF

    def __init__(self) -> None:
        self._base: Any = None

    def _make_base(self, request: ResolveRequest) -> Any:
        conf = dnf.conf.Conf()
        # The tree's release from the start: without one, dnf.Base() works out the host's from the
        # host's rpmdb (dnf.rpm.detect_releasever on "/"), which the request never uses.
        conf.releasever = request.releasever
        base = dnf.Base(conf)
        cache = request.cache_dir / "dnf"
        for sub in ("cache", "persist", "log"):
            (cache / sub).mkdir(parents=True, exist_ok=True)
        conf.installroot = str(request.installed_root)
        conf.cachedir = str(cache / "cache")
        conf.persistdir = str(cache / "persist")
        conf.logdir = str(cache / "log")
        conf.config_file_path = "/dev/null"  # not the host's dnf.conf, whose repositories read_all_repos would add
        conf.assumeyes = True
        conf.install_weak_deps = False
        conf.gpgcheck = False  # signatures are checked by verify_downloads, with the tree's keys
        return base

    def resolve(self, request: ResolveRequest) -> Resolution:
        base = self._make_base(request)
        repos = _read_repos(base, request.repos, request.releasever)
        # dnf.Base() reloads rpm's configuration: point %_dbpath at the tree only now.
        rpm.addMacro("_dbpath", str(request.dbpath))
        try:
            try:
                _fill_sack(base)
            except dnf.exceptions.RepoError as e:
                raise metadata_error(e) from e
            installed = {p.name for p in base.sack.query().installed()}
            gone = _keep_offered(base, request.keep)
            for local in base.add_remote_rpms([str(p) for p in request.local_files], strict=True):
                base.package_install(local, strict=True)
            if request.exclude:  # removed from the base: nothing brings them back
                base.sack.add_excludes(base.sack.query().available().filter(name=list(request.exclude)))
            for repo_id, name in request.replace:
                offered = base.sack.query().available().filter(name=name, reponame=repo_id).latest()
                if not offered:
                    raise no_match_in_repo(name, repo_id)
                base._goal.install(select=dnf.selector.Selector(base.sack).set(pkg=offered))
            for spec in request.install:
                matched = dnf.subject.Subject(spec).get_best_query(base.sack, with_provides=True).available()
                check_spec(spec, {p.name for p in matched}, installed)
                try:
                    base.install(spec)
                except dnf.exceptions.MarkingError as e:
                    raise ResolveError(f"cannot select {spec!r}: {one_line(e)}") from e
            try:
                base.resolve(allow_erasing=False)
            except dnf.exceptions.DepsolveError as e:
                raise depsolve_error(e) from e
            trans = base.transaction
            check_transaction(installed, [_package(p) for p in trans.remove_set],
                              [_package(p) for p in trans.install_set], request.replaced_names)
            resolved = tuple(
                ResolvedPackage(package=_package(p), repo_id=p.reponame, location=p.location,
                                checksum=_hawkey_chksum(p) if p.reponame != LOCAL_REPO_ID else
                                f"sha256:{file_digest(Path(p.localPkg()), 'sha256')}")
                for p in trans.install_set
            )
        finally:
            rpm.delMacro("_dbpath")
        self._base = base
        return Resolution(install=tuple(sorted(resolved, key=lambda r: r.package)), repos=repos, gone=gone)

    def download(self, resolution: Resolution, progress: Progress | None = None) -> tuple[Path, ...]:
        if self._base is None:
            raise ResolveError("download() needs a resolve() first")
        base = self._base
        pkgs = _ordered(base.transaction.install_set, resolution)
        try:
            base.download_packages(pkgs, _DownloadProgress(progress) if progress else None)
        except dnf.exceptions.DownloadError as e:
            raise download_error(e) from e
        except dnf.exceptions.Error as e:
            # dnf checks the packages of local (file://) repositories itself and raises a
            # plain Error naming none of them: name the one that differs, as for a download.
            if all(p._is_local_pkg() for p in pkgs):
                local = tuple(Path(p.localPkg()) for p in pkgs)
                for path in local:
                    if not path.is_file():
                        raise ResolveError(f"{path} is missing from its repository",
                                           hint="the repository metadata lists a package file that is gone: "
                                                "regenerate or fix the repository") from e
                verify_downloads(resolution, local)
            raise ResolveError(f"cannot use the downloaded packages: {one_line(e)}",
                               hint="the repository or the cache is corrupt: run `lulayer cleanup --repomd` "
                                    "or fix the repository") from e
        paths = tuple(Path(p.localPkg()) for p in pkgs)
        verify_downloads(resolution, paths)
        return paths


def _keep_offered(base: Any, keep: tuple[Package, ...]) -> tuple[Package, ...]:
    """Exclude the other builds of each package of keep that the repositories still offer; return
    those they do not offer (the resolver picks what it finds for them)."""
    gone = []
    for p in keep:
        same_name = base.sack.query().available().filter(name=p.name, arch=p.arch)
        offered = same_name.filter(epoch=p.epoch, version=p.version, release=p.release)
        if offered:
            base.sack.add_excludes(same_name.difference(offered))
        else:
            gone.append(p)
    return tuple(gone)


def _read_repos(base: Any, tree: RepoConfigTree, releasever: str) -> tuple[RepoConfig, ...]:
    """Read tree's repository configuration into base, as `dnf --installroot=TREE` does, and report
    the enabled repositories; refuse a configuration dnf read only in part or that names no source."""
    conf = base.conf
    conf.reposdir = [str(tree.path(d)) for d in conf.reposdir]
    conf.varsdir = [str(tree.path(d)) for d in conf.varsdir]
    conf.substitutions.update_from_etc("/", varsdir=conf.varsdir)
    conf.releasever = releasever
    sections = _repo_sections(conf)
    with _dnf_log() as records:
        base.read_all_repos()
    # dnf logs an invalid value (which it replaces by the default) as an error; a section it skips
    # (a bad id), and the "missing name" it lets pass, as warnings.
    check_repo_files(sections, {r.id for r in base.repos.all()},
                     errors=[r.getMessage() for r in records if r.levelno >= logging.ERROR],
                     warnings=[r.getMessage() for r in records if r.levelno < logging.ERROR])
    repos = []
    for repo in sorted(base.repos.iter_enabled(), key=lambda r: r.id):
        repo.gpgkey = [tree.key_url(url) for url in repo.gpgkey]  # also for repo_gpgcheck, which dnf does itself
        repos.append(RepoConfig(
            id=repo.id, repofile=repo.repofile, baseurls=tuple(repo.baseurl), metalink=repo.metalink or None,
            mirrorlist=repo.mirrorlist or None, gpgcheck=bool(repo.gpgcheck), gpgkeys=tuple(repo.gpgkey),
        ))
    check_repos(tree, repos)
    return tuple(repos)


def _repo_sections(conf: Any) -> dict[str, list[str]]:
    """The repository ids of each .repo file dnf will read, with dnf's parser: one it cannot parse is
    refused here (dnf would skip it with a warning)."""
    sections: dict[str, list[str]] = {}
    for reposdir in conf.reposdir:
        for path in sorted(Path(reposdir).glob("*.repo")):
            parser = libdnf.conf.ConfigParser()
            parser.setSubstitutions(conf.substitutions)
            try:
                parser.read(str(path))
            except RuntimeError as e:
                raise invalid_repo_config(e) from e
            sections[str(path)] = [libdnf.conf.ConfigParser.substitute(s, conf.substitutions)
                                   for s in parser.getData() if s != "main"]
    return sections


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("dnf: %s", record.getMessage())
        self.records.append(record)


@contextmanager
def _dnf_log() -> Iterator[list[logging.LogRecord]]:
    """The warnings and errors dnf logs meanwhile, kept off stderr."""
    logger = logging.getLogger("dnf")
    handler = _Records()
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _ordered(pkgs: Any, resolution: Resolution) -> list[Any]:
    """PKGS in the order of resolution.install."""
    by_nevra = {str(_package(p)): p for p in pkgs}
    return [by_nevra[str(r.package)] for r in resolution.install]


def _hawkey_chksum(p: Any) -> str:
    kind, value = p.chksum
    return f"{hawkey.chksum_name(kind)}:{value.hex()}"


def _quiet_dnf() -> None:
    # dnf logs to stderr at import in some versions; lulayer prints its own lines.
    logging.getLogger("dnf").setLevel(logging.CRITICAL)
    if not sys.stderr.isatty():
        logging.getLogger("dnf").propagate = False
        # Without a handler of its own, logging's last-resort handler would still print
        # dnf's critical records (e.g. "Package ... has incorrect checksum") to stderr.
        logging.getLogger("dnf").addHandler(logging.NullHandler())


_quiet_dnf()
