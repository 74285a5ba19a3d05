"""Dependency resolution behind one small interface.

Two backends implement it: libdnf5 (python3-libdnf5, Fedora 41 and later) and
dnf (python3-dnf on libdnf, what Debian has). `make_resolver` picks the first
that imports. Both resolve against the repositories of the booted
deployment's /etc/yum.repos.d, with the installed set read from a private copy
of the base tree's rpmdb, and cache metadata and RPMs under the sysroot's
/var/cache.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Protocol

from lulayer.errors import ResolveError
from lulayer.progress import Progress
from lulayer.rpmdb.model import Package


class Backend(StrEnum):
    DNF5 = "libdnf5"
    DNF = "dnf"


@dataclass(frozen=True)
class RepoConfig:
    id: str
    name: str
    baseurls: tuple[str, ...]
    metalink: str | None = None
    mirrorlist: str | None = None
    gpgcheck: bool = False
    gpgkeys: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResolvedPackage:
    package: Package
    repo_id: str
    location: str  # relative to the repository's base URL
    checksum: str  # as the metadata names it, "TYPE:HEX"


@dataclass(frozen=True)
class ResolveRequest:
    """Install `install` onto the tree whose rpmdb snapshot is `installed_root`.

    Specs are package names or full NEVRAs (to keep a layered package at the
    version it has). `installed_root` is a private root holding a copy of the
    base rpmdb at `dbpath`.
    """

    installed_root: Path
    dbpath: PurePosixPath
    repos: tuple[RepoConfig, ...]
    cache_dir: Path
    releasever: str
    install: tuple[str, ...]


@dataclass(frozen=True)
class Resolution:
    """The packages to add to the base, in no particular order."""

    install: tuple[ResolvedPackage, ...] = field(default_factory=tuple)


class Resolver(Protocol):
    backend: Backend

    def resolve(self, request: ResolveRequest) -> Resolution:
        """Resolve the request; raise ResolveError naming what is wrong."""
        ...

    def download(self, resolution: Resolution, progress: Progress | None = None) -> tuple[Path, ...]:
        """Fetch the resolved RPMs into the cache (reused when present, digest checked)."""
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


def _substitute(value: str, subs: dict[str, str]) -> str:
    for key, sub in subs.items():
        value = value.replace(f"${{{key}}}", sub).replace(f"${key}", sub)
    return value


def _key_in_tree(url: str, root: Path) -> str:
    # A gpgkey=file:///etc/pki/... names a file of the tree the repo file is in.
    if url.startswith("file:///"):
        return "file://" + str(root / url[len("file:///"):])
    return url


def read_repo_configs(root: Path, releasever: str) -> tuple[RepoConfig, ...]:
    """The enabled repositories of root's /etc/yum.repos.d."""
    reposdir = root / "etc" / "yum.repos.d"
    subs = {"releasever": releasever, "basearch": os.uname().machine, "arch": os.uname().machine}
    repos: list[RepoConfig] = []
    for path in sorted(reposdir.glob("*.repo")) if reposdir.is_dir() else []:
        cp = configparser.ConfigParser(interpolation=None)
        try:
            cp.read(path)
        except configparser.Error as e:
            raise ResolveError(f"{path} is not a valid .repo file: {e}".splitlines()[0],
                               hint="fix or remove it") from e
        for section in cp.sections():
            sec = cp[section]
            if sec.get("enabled", "1").strip() not in ("1", "true", "yes", "True"):
                continue
            baseurls = tuple(_substitute(u, subs) for u in sec.get("baseurl", "").split() if u)
            metalink = sec.get("metalink")
            mirrorlist = sec.get("mirrorlist")
            if not baseurls and not metalink and not mirrorlist:
                raise ResolveError(f"repository {section!r} in {path} has no baseurl, metalink or mirrorlist",
                                   hint="add a baseurl= line or disable it with enabled=0")
            repos.append(RepoConfig(
                id=section,
                name=sec.get("name", section),
                baseurls=baseurls,
                metalink=_substitute(metalink, subs) if metalink else None,
                mirrorlist=_substitute(mirrorlist, subs) if mirrorlist else None,
                gpgcheck=sec.get("gpgcheck", "0").strip() in ("1", "true", "yes", "True"),
                gpgkeys=tuple(_key_in_tree(_substitute(k, subs), root) for k in sec.get("gpgkey", "").split() if k),
            ))
    if not repos:
        raise ResolveError(f"no enabled repository in {reposdir}",
                           hint="add a .repo file to /etc/yum.repos.d of the booted deployment")
    return tuple(repos)


def split_specs(specs: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.strip() for s in specs if s.strip()))
