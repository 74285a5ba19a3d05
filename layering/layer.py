"""Layering for the next boot: install, uninstall, upgrade.

Every new deployment is composed from the base commit plus every requested
package, as rpm-ostree does, so a package removed from the request leaves no
trace and its dependencies go with it. Packages already layered keep the
version they have unless the operation is an upgrade.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from gi.repository import GLib, OSTree

from lulayer.errors import LulayerError, ResolveError
from lulayer.fsutil import remove_path
from lulayer.layering import compose as composer
from lulayer.layering.deploy import deploy
from lulayer.layering.resolver import (
    Progress,
    RepoConfigTree,
    Resolver,
    ResolveRequest,
    make_resolver,
    split_specs,
)
from lulayer.layering.staged import StagedDeployment
from lulayer.layering.staged import write as write_staged
from lulayer.rpmdb.db import commit_packages, read_packages, snapshot, tree_dbpath
from lulayer.rpmdb.model import Package, PackageChanges
from lulayer.sysroot import (
    Deployment,
    Origin,
    RefspecKind,
    Sysroot,
    commit_metadata,
    commit_timestamp,
    resolve_ref,
)

AT_FDCWD = -100
# What ostree-ext records on an image's merge commit (containers/bootc ostree-ext/src/container/store.rs
# META_MANIFEST_DIGEST, META_CONFIG) and the labels its version_for_config reads (container/mod.rs).
META_MANIFEST_DIGEST = "ostree.manifest-digest"
META_IMAGE_CONFIG = "ostree.container.image-config"
VERSION_LABELS = ("org.opencontainers.image.version", "version")


@dataclass(frozen=True)
class LayerResult:
    changes: PackageChanges
    requested: tuple[str, ...]
    deployment: Deployment | None = None  # the new pending deployment
    dry_run: bool = False
    message: str | None = None  # why nothing was done, when nothing was
    commit: str | None = None
    staged: StagedDeployment | None = None  # recorded for the next boot, not yet written
    notes: tuple[str, ...] = ()  # what the user should know besides the changes (an upgrade's base)


def base_commit_of(repo: OSTree.Repo, commit: str) -> str:
    """The base image commit under a (possibly layered) commit."""
    meta = commit_metadata(repo, commit)
    base = meta.get("lulayer.base-checksum")
    if isinstance(base, str):
        return base
    if meta.get("rpmostree.clientlayer"):
        _, variant = repo.load_variant(OSTree.ObjectType.COMMIT, commit)
        parent: str | None = OSTree.commit_get_parent(variant)
        if parent:
            return parent
    return commit


@dataclass(frozen=True)
class ImageState:
    """What the merge commit of a container image says about it, as rpm-ostree shows it: the
    manifest digest, and the version from the image's labels, which rpm-ostree shows in place
    of the commit's (src/daemon/rpmostreed-deployment-utils.cxx, RefspecType::Container)."""

    digest: str | None = None
    version: str | None = None

    @classmethod
    def of(cls, repo: OSTree.Repo, merge_commit: str) -> ImageState:
        meta = commit_metadata(repo, merge_commit)
        digest = meta.get(META_MANIFEST_DIGEST)
        labels: object = None
        try:
            config = json.loads(str(meta.get(META_IMAGE_CONFIG, "null")))
        except ValueError:
            config = None
        if isinstance(config, dict) and isinstance(config.get("config"), dict):
            labels = config["config"].get("Labels")
        version = next((labels[k] for k in VERSION_LABELS if isinstance(labels, dict) and labels.get(k)), None)
        return cls(digest if isinstance(digest, str) else None, version if isinstance(version, str) else None)


def base_checkout(sysroot: Sysroot, base_commit: str) -> Path:
    """A checkout of base_commit to compose on: a deployment of it, else a cached hardlink checkout.

    Either is only ever an overlay's lower layer, never written.
    """
    for d in sysroot.deployments():
        # A deployment with a mount on its /usr (a live overlay) no longer shows the commit there.
        if d.checksum == base_commit and not os.path.ismount(d.path / "usr"):
            return d.path
    cache = sysroot.base_checkouts
    dest = cache / base_commit
    if dest.is_dir():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{base_commit}.tmp"
    if tmp.exists():
        remove_path(tmp)
    opts = OSTree.RepoCheckoutAtOptions()
    opts.mode = OSTree.RepoCheckoutMode.NONE
    try:
        sysroot.repo.checkout_at(opts, AT_FDCWD, str(tmp), base_commit, None)
    except GLib.Error as e:
        raise LulayerError(f"cannot check out base commit {base_commit[:12]}: {e.message}") from e
    os.rename(tmp, dest)
    return dest


def _releasever(root: Path) -> str:
    for rel in ("usr/lib/os-release", "usr/etc/os-release", "etc/os-release"):
        f = root / rel
        if f.is_file():
            for line in f.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "VERSION_ID":
                    return value.strip().strip('"')
    return "rawhide"


def layered_packages(sysroot: Sysroot, commit: str, dbpath: PurePosixPath) -> tuple[Package, ...]:
    """Packages commit has that its base commit lacks."""
    base = base_commit_of(sysroot.repo, commit)
    if base == commit:
        return ()
    base_names = {p for p in commit_packages(sysroot.repo, base, dbpath)}
    return tuple(p for p in commit_packages(sysroot.repo, commit, dbpath) if p not in base_names)


class Layering:
    """The layering operations on one locked sysroot."""

    def __init__(self, sysroot: Sysroot, resolver: Resolver | None = None, progress: Progress | None = None) -> None:
        self.sysroot = sysroot
        self.resolver = resolver or make_resolver()
        self.progress = progress

    def install(self, names: Sequence[str], *, dry_run: bool = False, idempotent: bool = False,
                stage: bool = False) -> LayerResult:
        names = split_specs(names)
        if not names:
            raise LulayerError("no package named", hint="lulayer install PKG...")
        merge = self.sysroot.merge_deployment()
        current = set(merge.origin.requested)
        already = [n for n in names if n in current]
        if already and not idempotent:
            raise LulayerError(f"already requested: {', '.join(already)}",
                               hint="pass --idempotent to make this a no-op")
        new = [n for n in names if n not in current]
        if not new:
            return LayerResult(PackageChanges(), tuple(sorted(current)), dry_run=dry_run,
                               message=f"already requested: {', '.join(already)}; nothing to do")
        return self._layer(merge, current | set(new), dry_run=dry_run, upgrade=False, stage=stage)

    def uninstall(self, names: Sequence[str], *, remove_all: bool = False, dry_run: bool = False,
                  stage: bool = False) -> LayerResult:
        names = split_specs(names)
        merge = self.sysroot.merge_deployment()
        current = set(merge.origin.requested)
        if remove_all or not names:
            if not current:
                raise LulayerError("no package is layered", hint="nothing to uninstall")
            names = tuple(sorted(current))
        missing = [n for n in names if n not in current]
        if missing:
            base = base_commit_of(self.sysroot.repo, merge.checksum)
            in_base = {p.name for p in commit_packages(self.sysroot.repo, base, tree_dbpath(merge.path))}
            what = "; ".join(f"{n} is part of the base image" if n in in_base else f"{n} is not layered"
                             for n in missing)
            raise LulayerError(what, hint="only layered packages can be uninstalled; `lulayer status` lists them")
        return self._layer(merge, current - set(names), dry_run=dry_run, upgrade=False, stage=stage)

    def upgrade(self, *, dry_run: bool = False, stage: bool = False) -> LayerResult:
        merge = self.sysroot.merge_deployment()
        return self._layer(merge, set(merge.origin.requested), dry_run=dry_run, upgrade=True, stage=stage)

    def _upgrade_base(self, merge: Deployment, base: str) -> tuple[str, tuple[str, ...]]:
        """The base commit an upgrade layers on, and a note when it is not a newer one.

        For an OSTree origin, what its ref points at. For a container image, the newest commit
        the repository holds for it: the merge commit ostree-ext keeps under
        ostree/container/image/<escaped reference> (see lulayer.imageref), which rpm-ostree and
        bootc move when they pull. lulayer pulls nothing; like rpm-ostree, it does not go back
        to an older commit (src/daemon/rpmostree-sysroot-upgrader.cxx, check_timestamps).
        """
        origin, repo = merge.origin, self.sysroot.repo
        if origin.kind is not RefspecKind.CONTAINER:
            return resolve_ref(repo, origin.refspec) or base, ()
        held = resolve_ref(repo, origin.image().ostree_ref, allow_missing=True)
        if held is not None and held != base and commit_timestamp(repo, held) >= commit_timestamp(repo, base):
            image = ImageState.of(repo, held)
            what = " ".join(f"{v}" for v in (image.version, image.digest and f"({image.digest})") if v)
            return held, (f"Newer image held for {origin.refspec}: {what or held}",)
        # bootc refuses a deployment whose origin requests packages (lib/src/utils.rs
        # origin_has_rpmostree_stuff); rpm-ostree pulls and re-layers what the shared origin requests.
        fetch = ("`rpm-ostree upgrade` fetches it and keeps the layered packages (the .origin is shared)"
                 if origin.requested else "`bootc upgrade` or `rpm-ostree upgrade` fetches it")
        return base, (f"No newer image is held for {origin.refspec}: {fetch}.",)

    def _layer(self, merge: Deployment, requested: set[str], *, dry_run: bool, upgrade: bool,
               stage: bool) -> LayerResult:
        sysroot, repo = self.sysroot, self.sysroot.repo
        composer.clean_stale_scratch(sysroot.compose_scratch)
        current_base = base = base_commit_of(repo, merge.checksum)
        notes: tuple[str, ...] = ()
        if upgrade:
            base, notes = self._upgrade_base(merge, base)
        base_root = base_checkout(sysroot, base)
        dbpath = tree_dbpath(base_root)
        old_pkgs = commit_packages(repo, merge.checksum, dbpath)
        req_sorted = tuple(sorted(requested))
        if not requested:
            base_pkgs = commit_packages(repo, base, dbpath)
            changes = PackageChanges.between(old_pkgs, base_pkgs)
            if upgrade and base == merge.checksum:
                return LayerResult(changes, req_sorted, dry_run=dry_run, message="No upgrade available.",
                                   notes=notes)
            if dry_run:
                return LayerResult(changes, req_sorted, dry_run=True, notes=notes)
            return replace(self._deploy(base, merge.origin.with_requested(()), merge, changes, req_sorted, stage),
                           notes=notes)

        layered_now = {p.name: p for p in layered_packages(sysroot, merge.checksum, dbpath)}
        specs = tuple(
            layered_now[n].nevra if (n in layered_now and not upgrade) else n for n in req_sorted
        )
        releasever = _releasever(base_root)
        repos = RepoConfigTree(sysroot.booted().path)
        with snapshot(base_root / str(dbpath).lstrip("/"), dbpath) as installed_root:
            base_pkgs = read_packages(installed_root, dbpath)
            resolution = self.resolver.resolve(ResolveRequest(
                installed_root=installed_root, dbpath=dbpath, repos=repos,
                cache_dir=sysroot.cache_dir, releasever=releasever, install=specs,
            ))
            new_pkgs = tuple(sorted((*base_pkgs, *(r.package for r in resolution.install))))
            changes = PackageChanges.between(old_pkgs, new_pkgs)
            if upgrade and changes.empty and base == current_base:
                return LayerResult(changes, req_sorted, dry_run=dry_run, message="No upgrade available.",
                                   notes=notes)
            if dry_run:
                return LayerResult(changes, req_sorted, dry_run=True, notes=notes)
            rpms = self.resolver.download(resolution, self.progress)
        if not resolution.install:
            raise ResolveError("the resolver selected no package", hint="check the requested names")
        commit = composer.compose(repo, sysroot.compose_scratch, composer.ComposeRequest(
            base_commit=base, base_root=base_root, dbpath=dbpath, rpms=rpms,
            packages=tuple(r.package for r in resolution.install), requested=req_sorted,
            repos=composer.repo_stamps(sysroot.cache_dir, [r.id for r in resolution.repos]),
        ))
        result = self._deploy(commit, merge.origin.with_requested(req_sorted), merge, changes, req_sorted, stage)
        return replace(result, notes=notes)

    def _deploy(self, commit: str, origin: Origin, merge: Deployment, changes: PackageChanges,
                requested: tuple[str, ...], stage: bool) -> LayerResult:
        """Deploy commit for the next boot, or with stage, record it to be deployed (staged.py)."""
        if stage:
            staged = StagedDeployment.of(commit, origin, merge)
            write_staged(self.sysroot, staged)
            return LayerResult(changes, requested, commit=commit, staged=staged)
        dep = deploy(self.sysroot, commit, origin, merge)
        return LayerResult(changes, requested, deployment=dep, commit=commit)
