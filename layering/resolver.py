"""Dependency resolution behind one small interface, and the rules both backends follow.

Two backends implement it: libdnf5 (python3-libdnf5, Fedora 41 and later) and
dnf (python3-dnf on libdnf, what Debian has). `make_resolver` picks the first
that imports. Both read the repository configuration of the booted deployment
as `dnf --installroot=TREE` would (the library parses the .repo files and the
dnf vars, and honours every option it knows), resolve with the installed set
read from a private copy of the base tree's rpmdb, and cache metadata and RPMs
under the sysroot's /var/cache.

What lulayer decides is written once, here, on plain data: the backends only
turn their library's objects into names, packages and repository settings and
call the rules (`check_spec`, `check_transaction`, `check_repo_files`,
`check_repos`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Protocol

from lulayer.errors import ResolveError
from lulayer.progress import Progress
from lulayer.rpmdb.model import Package

# The repository id dnf and libdnf5 give packages read from files (HY_CMDLINE_REPO_NAME).
LOCAL_REPO_ID = "@commandline"


class Backend(StrEnum):
    DNF5 = "libdnf5"
    DNF = "dnf"


@dataclass(frozen=True)
class RepoConfigTree:
    """The tree whose repository configuration the resolver reads, as `dnf --installroot=TREE` would.

    The backend's library reads it: its own default reposdirs and varsdirs
    (/etc/yum.repos.d, /etc/dnf/vars, ...) taken inside the tree.
    """

    root: Path

    def path(self, absolute: str) -> Path:
        """Where a path of the tree (/etc/yum.repos.d) is on this machine."""
        return self.root / absolute.lstrip("/")

    @property
    def reposdir(self) -> Path:
        return self.path("/etc/yum.repos.d")

    def key_url(self, url: str) -> str:
        """A gpgkey URL as seen from here: file:///etc/pki/... (or a bare path) names a file of the tree."""
        if url.startswith(("file:///", "/")):
            return f"file://{self.path(url.removeprefix('file://'))}"
        return url


@dataclass(frozen=True)
class RepoConfig:
    """An enabled repository as the backend's library read it: what lulayer's own checks need."""

    id: str
    repofile: str  # the .repo file that defines it
    baseurls: tuple[str, ...] = ()
    metalink: str | None = None
    mirrorlist: str | None = None
    gpgcheck: bool = False
    gpgkeys: tuple[str, ...] = ()  # file:// keys point into the tree (RepoConfigTree.key_url)


@dataclass(frozen=True)
class ResolvedPackage:
    package: Package
    repo_id: str
    location: str  # relative to the repository's base URL
    checksum: str  # as the metadata names it, "TYPE:HEX"


@dataclass(frozen=True)
class ResolveRequest:
    """Install `install` onto the tree whose rpmdb snapshot is `installed_root`.

    Specs are package names, capabilities or full NEVRAs. `keep` are packages layered
    today: each stays at the build it has as long as the enabled repositories still
    offer that build (the backend hides the name's other builds, as dnf keeps an
    installed package rather than upgrading it), and resolves as any other name where
    they do not. `installed_root` is a private root holding a copy of the base rpmdb at
    `dbpath`. `repos` is the tree whose repository configuration is read;
    `releasever` is substituted for $releasever in it.
    """

    installed_root: Path
    dbpath: PurePosixPath
    repos: RepoConfigTree
    cache_dir: Path
    releasever: str
    install: tuple[str, ...]
    keep: tuple[Package, ...] = ()
    local: tuple[Path, ...] = ()  # RPM files to install as they are (their dependencies come from the repositories)
    # Base overrides: names removed from the base, never to be pulled back in from a repository;
    # (repository id, name) of base packages replaced by what that repository offers.
    exclude: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    # (name, file) of base packages replaced by a local RPM file (`[overrides] replace-local`).
    replace_local: tuple[tuple[str, Path], ...] = ()

    @property
    def local_files(self) -> tuple[Path, ...]:
        """Every RPM file to install: the layered ones and the base replacements."""
        return (*self.local, *(path for _, path in self.replace_local))

    @property
    def replaced_names(self) -> frozenset[str]:
        """The base packages an override replaces, from a repository or a local file."""
        return frozenset((*(name for _, name in self.replace), *(name for name, _ in self.replace_local)))


@dataclass(frozen=True)
class Resolution:
    """The packages to add to the base, in no particular order, and the enabled repositories they came from;
    `gone`: the packages of the request's `keep` whose build no enabled repository offers any more."""

    install: tuple[ResolvedPackage, ...] = field(default_factory=tuple)
    repos: tuple[RepoConfig, ...] = field(default_factory=tuple)
    gone: tuple[Package, ...] = field(default_factory=tuple)


class Resolver(Protocol):
    @property
    def backend(self) -> Backend:
        """The library that resolves."""
        ...

    def resolve(self, request: ResolveRequest) -> Resolution:
        """Resolve the request; raise ResolveError naming what is wrong."""
        ...

    def download(self, resolution: Resolution, progress: Progress | None = None) -> tuple[Path, ...]:
        """Fetch the resolved RPMs into the cache (reused when present, digest and signature checked)."""
        ...


def available_backends() -> dict[Backend, str | None]:
    """Each backend and why it cannot be used (None when it can)."""
    result: dict[Backend, str | None] = {}
    for backend, module in ((Backend.DNF5, "libdnf5"), (Backend.DNF, "dnf")):
        try:
            __import__(module)
            result[backend] = None
        except ImportError as e:
            result[backend] = f"{module} does not import: {e}"
    return result


def make_resolver(backend: Backend | None = None) -> Resolver:
    """The resolver for backend, or the first one that imports (libdnf5, then dnf)."""
    reasons = available_backends()
    order = [backend] if backend else [Backend.DNF5, Backend.DNF]
    for b in order:
        if reasons[b] is None:
            if b is Backend.DNF5:
                from lulayer.layering.dnf5_backend import Dnf5Resolver

                return Dnf5Resolver()
            from lulayer.layering.dnf_backend import DnfResolver

            return DnfResolver()
    raise ResolveError(
        "no resolver is available: " + "; ".join(str(reasons[b]) for b in order),
        hint="install python3-libdnf5 or python3-dnf",
    )


def split_specs(specs: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.strip() for s in specs if s.strip()))


# --------------------------------------------------------------------------- the rules


def one_line(e: BaseException | str) -> str:
    """What a library says, on one line."""
    text = str(e).strip() or (type(e).__name__ if isinstance(e, BaseException) else "")
    return " ".join(text.split())


def check_repo_files(sections: Mapping[str, Collection[str]], loaded: Set[str], errors: Sequence[str],
                     warnings: Sequence[str] = ()) -> None:
    """Refuse a repository configuration the library read only in part.

    `sections` are the repository ids each .repo file defines (read by the
    library's own parser; a file it cannot parse is refused before this),
    `loaded` the ids it made repositories of, `errors` and `warnings` what it
    logged while reading. dnf goes on without what it could not read, or with
    a default for a value it could not; an image is not composed from a
    configuration half understood.
    """
    for path, ids in sections.items():
        for repo_id in ids:
            if repo_id not in loaded:
                said = next((m for m in (*errors, *warnings) if repo_id in m), "it could not be read")
                raise invalid_repo_config(f"repository {repo_id!r} in {path}: {said}")
    if errors:
        raise invalid_repo_config(errors[0])


def invalid_repo_config(detail: str | BaseException) -> ResolveError:
    return ResolveError(f"invalid repository configuration: {one_line(detail)}",
                        hint="fix or remove the .repo file")


def check_repos(tree: RepoConfigTree, repos: Sequence[RepoConfig]) -> None:
    """Refuse a configuration without an enabled repository, or with one that names nowhere to fetch from."""
    if not repos:
        raise ResolveError(f"no enabled repository in {tree.reposdir}",
                           hint="add a .repo file to /etc/yum.repos.d of the booted deployment")
    for repo in repos:
        if not (repo.baseurls or repo.metalink or repo.mirrorlist):
            raise ResolveError(f"repository {repo.id!r} in {repo.repofile} has no baseurl, metalink or mirrorlist",
                               hint="add a baseurl= line or disable it with enabled=0")


def check_spec(spec: str, matched: Set[str], installed: Set[str]) -> None:
    """Refuse a spec that names nothing available (`matched`: the names it matched), or only base packages."""
    if not matched:
        raise ResolveError(f"no package matches {spec!r} in the enabled repositories",
                           hint="check the name with `dnf --installroot=... list` or the repository")
    if matched <= installed:
        raise ResolveError(f"{spec!r} is already in the base image",
                           hint="only packages the base lacks can be layered")


def check_transaction(installed: Set[str], removes: Iterable[Package], installs: Iterable[Package],
                      replaced: Set[str] = frozenset()) -> None:
    """Refuse a transaction that would remove or replace a package of the base: layering only adds.
    The base packages named in replaced are replaced on request (an override)."""
    touched = [p for p in (*removes, *(p for p in installs if p.name in installed)) if p.name not in replaced]
    if touched:
        raise ResolveError(
            "layering would replace base packages: " + ", ".join(str(p) for p in touched),
            hint="replacing base packages is not supported",
        )


def no_match_in_repo(name: str, repo: str) -> ResolveError:
    """rpm-ostree's words for a replacement the repository lacks (src/libpriv/rpmostree-core.cxx)."""
    return ResolveError(f"No matches for '{name}' in repo '{repo}'",
                        hint="check the name and that the repository is enabled in /etc/yum.repos.d")


def metadata_error(detail: str | BaseException) -> ResolveError:
    return ResolveError(f"cannot load repository metadata: {one_line(detail)}",
                        hint="check the baseurl in /etc/yum.repos.d and that it is reachable")


def depsolve_error(detail: str | BaseException) -> ResolveError:
    return ResolveError(f"dependencies cannot be satisfied: {one_line(detail)}",
                        hint="the repository lacks what the package requires")


def download_error(detail: str | BaseException) -> ResolveError:
    return ResolveError(f"cannot download packages: {one_line(detail)}",
                        hint="check that the repository is reachable and retry")
