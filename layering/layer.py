"""Layering for the next boot: install, uninstall, upgrade.

Every new deployment is composed from the base commit plus every requested
package, as rpm-ostree does, so a package removed from the request leaves no
trace and its dependencies go with it. Packages already layered, and their
dependencies, keep the build they have while the enabled repositories offer it
(rpm-ostree issue 5323: no unrelated upgrades); one the repositories dropped moves
to what they offer, with a note; an upgrade moves everything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import replace as replace_fields
from functools import partial
from pathlib import Path, PurePosixPath

from gi.repository import GLib, OSTree

from lulayer import signals
from lulayer.errors import LulayerError, ResolveError
from lulayer.fsutil import remove_path
from lulayer.layering import compose as composer
from lulayer.layering import localpkg
from lulayer.layering.deploy import deploy
from lulayer.layering.resolver import (
    LOCAL_REPO_ID,
    RepoConfigTree,
    Resolution,
    Resolver,
    ResolveRequest,
    make_resolver,
    split_specs,
)
from lulayer.layering.staged import StagedDeployment
from lulayer.layering.staged import write as write_staged
from lulayer.progress import Progress
from lulayer.rpmdb.db import commit_packages, providers, read_packages, snapshot, tree_dbpath
from lulayer.rpmdb.model import Package, PackageChanges
from lulayer.rpmdb.transaction import UnmetDependencies, install_rpms
from lulayer.run import run_in_child
from lulayer.sysroot import (
    Deployment,
    Origin,
    Overrides,
    RefspecKind,
    RepoReplacement,
    Sysroot,
    commit_metadata,
    commit_timestamp,
    nevra_name,
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
    previous: tuple[str, ...] = ()  # the requests before the operation
    inactive: tuple[str, ...] = ()  # requests the base image already provides (rpm-ostree's "inactive")

    @property
    def changed(self) -> bool:
        """A new deployment for the next boot was made or recorded (in a dry run: would be)."""
        return self.message is None if self.dry_run else self.commit is not None

    def to_json(self) -> dict[str, object]:
        """What the text output of an operation says (cli._print_changes), as data."""
        out: dict[str, object] = {
            "changed": self.changed,
            "dry-run": self.dry_run,
            "requested-packages": list(self.requested),
            "previous-requested-packages": list(self.previous),
            "inactive-requests": list(self.inactive),
            "changes": self.changes.to_json(),
        }
        if self.message is not None:
            out["message"] = self.message
        if self.notes:
            out["notes"] = list(self.notes)
        if self.commit is not None:
            out["commit"] = self.commit
        if self.deployment is not None:
            d = self.deployment
            out["deployment"] = {"id": d.id, "osname": d.osname, "checksum": d.checksum, "serial": d.serial,
                                 "staged": False}
        elif self.staged is not None:
            out["deployment"] = {"checksum": self.staged.commit, "staged": True, "builds-on": self.staged.merge}
        return out


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


def layered_requests_of(repo: OSTree.Repo, commit: str) -> tuple[str, ...]:
    """The requests a layered commit was composed with (lulayer.requested, or rpm-ostree's
    rpmostree.packages); the inactive ones are not among them."""
    meta = commit_metadata(repo, commit)
    for key in ("lulayer.requested", "rpmostree.packages"):
        value = meta.get(key)
        if isinstance(value, list):
            return tuple(str(v) for v in value)
    return ()


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


def moved_notes(keep: Sequence[Package], resolution: Resolution) -> tuple[str, ...]:
    """What the user should know of the layered packages that did not keep their builds: gone from
    the repositories, or moved because a new request needs another build."""
    now = {r.package.name: r.package for r in resolution.install}
    gone = set(resolution.gone)
    notes = []
    for old in keep:
        new = now.get(old.name)
        if new is None or new == old:
            continue
        why = "is no longer offered" if old in gone else "is not what the request needs"
        notes.append(f"{old.name} {old.evr} {why}; moving to {new.evr}")
    return tuple(notes)


def layered_packages(sysroot: Sysroot, commit: str, dbpath: PurePosixPath) -> tuple[Package, ...]:
    """Packages commit has that its base commit has none of the name of."""
    base = base_commit_of(sysroot.repo, commit)
    if base == commit:
        return ()
    base_names = {p.name for p in commit_packages(sysroot.repo, base, dbpath)}
    # A base package an override replaces is the base's, in another version: not layered.
    return tuple(p for p in commit_packages(sysroot.repo, commit, dbpath) if p.name not in base_names)


def remove_base_packages(root: Path, dbpath: PurePosixPath, packages: Sequence[Package]) -> None:
    """Erase packages from the rpmdb of root (a snapshot: no file is touched), refusing when
    another installed package needs one of them: what an override removal does to the
    installed set, checked before anything is composed."""
    try:
        run_in_child("lulayer-rpmdb", lambda: install_rpms(root, dbpath, (), erase=[p.name for p in packages],
                                                           justdb=True))
    except UnmetDependencies as e:
        names = " ".join(p.name for p in packages)
        raise LulayerError(f"cannot remove {names} from the base image: {'; '.join(e.problems)}",
                           hint=f"remove what needs it too (`lulayer override remove {names} PKG...`), "
                                "or keep it") from e


def _reset_overrides(ov: Overrides, specs: Sequence[str]) -> Overrides:
    """ov without the overrides of specs (names, or the NEVRAs of replace-local entries), as
    rpm-ostree's `override reset` (src/daemon/rpmostreed-transaction-types.cxx); one with none
    is refused in rpm-ostree's words."""
    remove, replace_local = list(ov.remove), list(ov.replace_local)
    repos = [(r.repo, list(r.packages)) for r in ov.replace]
    for spec in specs:
        if spec in remove:
            remove.remove(spec)
            continue
        local = next((e for e in replace_local if spec in (e.split(":", 1)[-1], nevra_name(e.split(":", 1)[-1]))),
                     None)
        if local is not None:
            replace_local.remove(local)
            continue
        held = next((names for _, names in repos if spec in names), None)
        if held is None:
            raise LulayerError(f"No overrides for package '{spec}'",
                               hint="`lulayer status` lists the overrides (RemovedBasePackages, LocalOverrides, "
                                    "RemoteOverrides)")
        held.remove(spec)
    return Overrides(tuple(remove), tuple(RepoReplacement(r, tuple(n)) for r, n in repos if n), tuple(replace_local))


class Layering:
    """The layering operations on one locked sysroot."""

    def __init__(self, sysroot: Sysroot, resolver: Resolver | None = None, progress: Progress | None = None,
                 live_gate: Callable[[str], bool] | None = None,
                 ahead: Callable[[Path, Path], object] | None = None) -> None:
        self.sysroot = sysroot
        self.resolver = resolver or make_resolver()
        self.progress = progress
        # With stage: asked about the new commit before anything is recorded for the next boot.
        # It raises to refuse the change (nothing is recorded), or says whether it goes live
        # (staged) or not (deployed for the next boot only).
        self.live_gate = live_gate
        # Given what rpm wrote (the upper layers of a compose's root and /etc), before it is committed
        # (compose.compose): live.mount_ahead, for an install that goes live.
        self.ahead = ahead

    def install(self, names: Sequence[str], *, dry_run: bool = False, idempotent: bool = False,
                allow_inactive: bool = False, latest: bool = False, stage: bool = False) -> LayerResult:
        """Request names. Already requested: refused, or with idempotent a no-op, or with
        latest brought to their newest versions. A name the base image provides is refused
        unless allow_inactive (rpm-ostree's inactive request)."""
        names = split_specs(names)
        if not names:
            raise LulayerError("no package named", hint="lulayer install PKG...")
        merge = self.sysroot.merge_deployment()
        files = {localpkg.local_path(n): localpkg.read_local(n) for n in names if localpkg.is_local_spec(n)}
        names = tuple(n for n in names if not localpkg.is_local_spec(n))
        local = set(merge.origin.requested_local)
        taken = {localpkg.package_of(localpkg.parse_entry(e)[1]).name for e in local}
        for path, lp in files.items():
            if lp.entry in local and not idempotent:
                raise LulayerError(f"already requested: {lp.package.nevra}",
                                   hint="pass --idempotent to make this a no-op")
            if lp.entry not in local and (lp.package.name in taken or lp.package.name in merge.origin.requested):
                raise LulayerError(f"{path}: {lp.package.name} is layered already",
                                   hint=f"uninstall {lp.package.name} first")
        new_files = {p: lp for p, lp in files.items() if lp.entry not in local}
        if not names:
            if not new_files:
                return LayerResult(PackageChanges(), tuple(sorted(merge.origin.requested)), dry_run=dry_run,
                                   message="already requested; nothing to do", previous=merge.origin.requested)
            return self._layer(merge, set(merge.origin.requested), dry_run=dry_run, upgrade=False, stage=stage,
                               new_files=new_files)
        current = set(merge.origin.requested)
        already = [n for n in names if n in current]
        if already and not (idempotent or latest):
            raise LulayerError(f"already requested: {', '.join(already)}",
                               hint="pass --idempotent to make this a no-op")
        new = [n for n in names if n not in current]
        if not new and not latest:
            return LayerResult(PackageChanges(), tuple(sorted(current)), dry_run=dry_run,
                               message=f"already requested: {', '.join(already)}; nothing to do",
                               previous=merge.origin.requested)
        return self._layer(merge, current | set(new), dry_run=dry_run, upgrade=False, stage=stage,
                           new=frozenset(new), allow_inactive=allow_inactive,
                           fresh=frozenset(names) if latest else frozenset(), new_files=new_files)

    def uninstall(self, names: Sequence[str], *, remove_all: bool = False, idempotent: bool = False,
                  dry_run: bool = False, stage: bool = False) -> LayerResult:
        """Drop names from the requests (remove_all: every request). A name not requested is
        refused, or with idempotent skipped. No names and no remove_all is refused: an empty
        list in a script must not remove everything."""
        names = split_specs(names)
        merge = self.sysroot.merge_deployment()
        # A local package is uninstalled by its name or NEVRA.
        local = {e: localpkg.parse_entry(e)[1] for e in merge.origin.requested_local}
        dropped = {e for e, nevra in local.items() if remove_all or nevra in names
                   or localpkg.package_of(nevra).name in names}
        matched = {n for n in names for nevra in (local[e] for e in dropped)
                   if n in (nevra, localpkg.package_of(nevra).name)}
        names = tuple(n for n in names if n not in matched)
        if dropped and not names:
            return self._layer(merge, set(merge.origin.requested), dry_run=dry_run, upgrade=False, stage=stage,
                               local=tuple(sorted(set(local) - dropped)))
        current = set(merge.origin.requested)
        nothing = LayerResult(PackageChanges(), tuple(sorted(current)), dry_run=dry_run,
                              previous=merge.origin.requested)
        if remove_all:
            if not current and not dropped:
                if idempotent:
                    return replace_fields(nothing, message="no package is layered; nothing to do")
                raise LulayerError("no package is layered", hint="nothing to uninstall")
            names = tuple(sorted(current))
        elif not names:
            raise LulayerError("no package named",
                               hint="name the packages to uninstall, or pass --all to remove every layered package")
        missing = [n for n in names if n not in current]
        if missing and idempotent:
            names = tuple(n for n in names if n in current)
            if not names:
                return replace_fields(nothing, message=f"not requested: {', '.join(missing)}; nothing to do")
        elif missing:
            base = base_commit_of(self.sysroot.repo, merge.checksum)
            in_base = {p.name for p in commit_packages(self.sysroot.repo, base, tree_dbpath(merge.path))}
            what = "; ".join(f"{n} is part of the base image" if n in in_base else f"{n} is not layered"
                             for n in missing)
            raise LulayerError(what, hint="only layered packages can be uninstalled; `lulayer status` lists them")
        return self._layer(merge, current - set(names), dry_run=dry_run, upgrade=False, stage=stage,
                           local=tuple(sorted(set(local) - dropped)))

    def override(self, *, remove: Sequence[str] = (), replace_from: tuple[str, Sequence[str]] | None = None,
                 replace_local: Sequence[str] = (), reset: Sequence[str] = (), reset_all: bool = False,
                 dry_run: bool = False, stage: bool = False) -> LayerResult:
        """Change the base image's overrides (rpm-ostree's `override`): remove base packages,
        replace them with what the repository replace_from[0] offers or with the RPM files
        replace_local names (checked and stored as local installs are, localpkg), or reset (drop)
        overrides, by name (reset_all: every one). The layered requests stay as they are."""
        merge = self.sysroot.merge_deployment()
        current = merge.origin.overrides
        if reset_all:
            if current.empty:
                return LayerResult(PackageChanges(), merge.origin.requested, dry_run=dry_run,
                                   message="no overrides; nothing to do", previous=merge.origin.requested)
            return self._layer(merge, set(merge.origin.requested), dry_run=dry_run, upgrade=False, stage=stage,
                               overrides=Overrides())
        wanted = _reset_overrides(current, split_specs(reset))
        remove, (repo_id, replace) = split_specs(remove), (replace_from or ("", ()))
        if remove or replace:
            base = self._base_packages(merge)
            if remove:
                wanted = replace_fields(wanted, remove=(*wanted.remove, *self._base_names(merge, base, wanted, remove)))
            replace = split_specs(replace)
            if replace:
                wanted = replace_fields(wanted, replace=(*wanted.replace, RepoReplacement(
                    repo_id, self._base_names(merge, base, wanted, replace))))
        files = {localpkg.local_path(f): localpkg.read_local(f) for f in replace_local}
        if files:
            base = self._base_packages(merge)
            for lp in files.values():
                # A new file for a name replaced by a file already takes its place, as in rpm-ostree
                # (rpmostreed-transaction-types.cxx: the old replace-local entry of the name goes).
                wanted = replace_fields(wanted, replace_local=tuple(
                    e for e in wanted.replace_local if nevra_name(localpkg.parse_entry(e)[1]) != lp.package.name))
                self._base_names(merge, base, wanted, (lp.package.name,))
                wanted = replace_fields(wanted, replace_local=(*wanted.replace_local, lp.entry))
        if not (remove or replace or files or reset):
            raise LulayerError("no package named", hint="name the base packages to override")
        return self._layer(merge, set(merge.origin.requested), dry_run=dry_run, upgrade=False, stage=stage,
                           overrides=wanted, new_files=files)

    def live_only(self, on: str, names: Sequence[str]) -> tuple[str, PackageChanges]:
        """Compose names onto the commit on (what the running system holds, or will), for the
        running system only: the new commit is never deployed and no origin changes. The
        packages are only added; what on has stays as it is. Returns the commit and the change."""
        sysroot, repo = self.sysroot, self.sysroot.repo
        composer.clean_stale_scratch(sysroot.compose_scratch)
        root = base_checkout(sysroot, on)
        dbpath = tree_dbpath(root)
        with snapshot(root / str(dbpath).lstrip("/"), dbpath) as installed_root:
            old = read_packages(installed_root, dbpath)
            resolution = self.resolver.resolve(ResolveRequest(
                installed_root=installed_root, dbpath=dbpath, repos=RepoConfigTree(sysroot.booted().path),
                cache_dir=sysroot.cache_dir, releasever=_releasever(root), install=tuple(names),
            ))
            changes = PackageChanges.between(old, (*old, *(r.package for r in resolution.install)))
            rpms = self.resolver.download(resolution, self.progress)
        commit = composer.compose(repo, sysroot.compose_scratch, composer.ComposeRequest(
            base_commit=on, base_root=root, dbpath=dbpath, rpms=rpms,
            packages=tuple(r.package for r in resolution.install), requested=tuple(names),
            repos=composer.repo_stamps(sysroot.cache_dir, [r.id for r in resolution.repos]),
        ))
        return commit, changes

    def _base_packages(self, merge: Deployment) -> tuple[Package, ...]:
        repo = self.sysroot.repo
        return commit_packages(repo, base_commit_of(repo, merge.checksum), tree_dbpath(merge.path))

    @staticmethod
    def _base_names(merge: Deployment, base: Sequence[Package], overrides: Overrides,
                    specs: Sequence[str]) -> tuple[str, ...]:
        """The base package names specs (names or NEVRAs) match, refused in rpm-ostree's words
        (rpmostreed-transaction-types.cxx, rust/src/treefile.rs) when one matches none or has an
        override already."""
        by_spec = {p.name: p for p in base} | {p.nevra: p for p in base}
        names = []
        for spec in specs:
            found = by_spec.get(spec)
            if found is None:
                if spec in merge.origin.requested:
                    raise LulayerError(f"{spec} is a layered package, not part of the base image",
                                       hint=f"`lulayer uninstall {spec}` removes it")
                raise LulayerError(f'Package "{spec}" not found',
                                   hint="only packages of the base image can be overridden")
            if found.name in overrides.names() or found.name in names:
                raise LulayerError(f"Override already exists for package '{spec}'",
                                   hint=f"`lulayer override reset {found.name}` drops it first")
            names.append(found.name)
        return tuple(names)

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

    def _layer(self, merge: Deployment, requested: set[str], *, dry_run: bool, upgrade: bool, stage: bool,
               new: frozenset[str] = frozenset(), allow_inactive: bool = True,
               fresh: frozenset[str] = frozenset(), local: tuple[str, ...] | None = None,
               new_files: Mapping[Path, localpkg.LocalPackage] | None = None,
               overrides: Overrides | None = None) -> LayerResult:
        """Compose the base (upgrade: the newest commit of the origin, _upgrade_base) with its
        overrides (the merge deployment's unless given) plus requested.

        Layered packages keep their versions, except with upgrade and those named in fresh,
        which resolve to the newest. Requests the base provides are inactive: kept in the
        origin, not layered (refused for the new ones unless allow_inactive). Overrides of
        packages the base lacks are inactive too, as in rpm-ostree. Local packages:
        the origin's requested-local entries (local, when given, instead), taken out of the
        OSTree repository, and new_files, stored there once resolved."""
        sysroot, repo = self.sysroot, self.sysroot.repo
        overrides = merge.origin.overrides if overrides is None else overrides
        composer.clean_stale_scratch(sysroot.compose_scratch)
        merge_base = base = base_commit_of(repo, merge.checksum)
        notes: tuple[str, ...] = ()
        if upgrade:
            base, notes = self._upgrade_base(merge, base)
        base_root = base_checkout(sysroot, base)
        dbpath = tree_dbpath(base_root)
        old_pkgs = commit_packages(repo, merge.checksum, dbpath)
        req_sorted = tuple(sorted(requested))
        new_files = dict(new_files or {})
        new_entries = {lp.entry: p.absolute() for p, lp in new_files.items()}
        # The files a replace-local entry names, new ones where they are; the rest are layered.
        replace_local = tuple((localpkg.package_of(localpkg.parse_entry(e)[1]).name, self._local_file(e, new_entries))
                              for e in overrides.replace_local)
        local_entries = tuple(sorted({*(merge.origin.requested_local if local is None else local),
                                      *(e for e in new_entries if e not in overrides.replace_local)}))
        local_files = tuple(self._local_file(e, new_entries) for e in local_entries)
        same_overrides = overrides == merge.origin.overrides
        with snapshot(base_root / str(dbpath).lstrip("/"), dbpath) as installed_root:
            base_pkgs = read_packages(installed_root, dbpath)
            in_base = {p.name: p for p in base_pkgs}
            removed = tuple(in_base[n] for n in sorted(overrides.remove) if n in in_base)
            if removed:  # the installed set the resolver sees; refused when the base needs them
                remove_base_packages(installed_root, dbpath, removed)
                base_pkgs = tuple(p for p in base_pkgs if p not in removed)
            replace = tuple((r.repo, n) for r in overrides.replace for n in r.packages if n in in_base)
            provided = {n: found for n in req_sorted if (found := providers(installed_root, dbpath, n))}
            refused = sorted(n for n in new if n in provided) if not allow_inactive else []
            if refused:
                n = refused[0]
                raise LulayerError(f'"{n}" is already provided by: {" ".join(p.nevra for p in provided[n])}',
                                   hint="pass --allow-inactive to request it anyway")
            active = tuple(n for n in req_sorted if n not in provided)
            result = partial(LayerResult, requested=req_sorted, previous=merge.origin.requested,
                             inactive=tuple(sorted(provided)), notes=notes)
            resolution = None
            reuse = (not upgrade and not fresh and base == merge_base and merge.checksum != merge_base
                     and same_overrides and set(active) == set(layered_requests_of(repo, merge.checksum))
                     and local_entries == tuple(sorted(merge.origin.requested_local)))
            if reuse:  # the same packages on the same base (only inactive requests changed): the same commit
                new_pkgs = old_pkgs
            elif active or local_files or replace or replace_local:
                keep = () if upgrade else tuple(
                    p for p in layered_packages(sysroot, merge.checksum, dbpath) if p.name not in fresh)
                request = ResolveRequest(
                    installed_root=installed_root, dbpath=dbpath, repos=RepoConfigTree(sysroot.booted().path),
                    cache_dir=sysroot.cache_dir, releasever=_releasever(base_root), install=active, keep=keep,
                    local=local_files, exclude=overrides.remove, replace=replace,
                    replace_local=tuple((n, p) for n, p in replace_local if n in in_base),
                )
                resolution = self._resolve_keeping(request)
                # A replacement takes the place of the base's package of its name.
                replaced = request.replaced_names
                new_pkgs = tuple(sorted((*(p for p in base_pkgs if p.name not in replaced),
                                         *(r.package for r in resolution.install))))
                notes = (*notes, *moved_notes(keep, resolution))
            else:
                new_pkgs = base_pkgs
            changes = PackageChanges.between(old_pkgs, new_pkgs)
            if (upgrade or fresh) and changes.empty and base == merge_base and same_overrides and req_sorted == tuple(
                    sorted(merge.origin.requested)) and local_entries == tuple(sorted(merge.origin.requested_local)):
                message = ("No upgrade available." if upgrade else
                           f"already at the newest versions: {', '.join(sorted(fresh))}; nothing to do")
                return result(changes, dry_run=dry_run, message=message)
            if dry_run:
                return result(changes, dry_run=True)
            rpms = self.resolver.download(resolution, self.progress) if resolution is not None else ()
        signals.checkpoint()
        for path, lp in new_files.items():
            localpkg.store(repo, path, lp)
        origin = merge.origin.with_requested(req_sorted, local_entries).with_overrides(overrides)
        done = partial(replace_fields, previous=merge.origin.requested, inactive=tuple(sorted(provided)), notes=notes)
        if resolution is None and (reuse or not removed):  # nothing to compose: the base, or the merge commit again
            commit = merge.checksum if reuse else base
            return done(self._deploy(commit, origin, merge, changes, req_sorted, stage))
        installs = resolution.install if resolution is not None else ()
        if resolution is not None and not installs:
            raise ResolveError("the resolver selected no package", hint="check the requested names")
        commit = composer.compose(repo, sysroot.compose_scratch, composer.ComposeRequest(
            base_commit=base, base_root=base_root, dbpath=dbpath, rpms=rpms,
            packages=tuple(r.package for r in installs), requested=active,
            repos=composer.repo_stamps(sysroot.cache_dir, [r.id for r in resolution.repos] if resolution else []),
            removed=removed,
            replaced=tuple(composer.Replacement(r.package, in_base[r.package.name],
                                                "" if r.repo_id == LOCAL_REPO_ID else f"repo={r.repo_id}")
                           for r in installs if r.package.name in in_base),
        ), ahead=self.ahead)
        signals.checkpoint()  # the new commit has no ref yet: a later prune removes it
        return done(self._deploy(commit, origin, merge, changes, req_sorted, stage))

    def _local_file(self, entry: str, new: Mapping[str, Path]) -> Path:
        """The RPM file of a requested-local or replace-local entry: the one named now, else out of the
        OSTree repository (localpkg.retrieve)."""
        if entry in new:
            return new[entry]
        return localpkg.retrieve(self.sysroot.repo, entry, self.sysroot.cache_dir / localpkg.CACHE_DIR)[1]

    def _resolve_keeping(self, request: ResolveRequest) -> Resolution:
        """Resolve with the layered packages kept at their builds; where that cannot be (a new request
        needs a newer build of one), resolve without keeping them, as dnf would upgrade it."""
        try:
            return self.resolver.resolve(request)
        except ResolveError:
            if not request.keep:
                raise
        return self.resolver.resolve(replace_fields(request, keep=()))

    def _deploy(self, commit: str, origin: Origin, merge: Deployment, changes: PackageChanges,
                requested: tuple[str, ...], stage: bool) -> LayerResult:
        """Deploy commit for the next boot, or with stage, record it to be deployed (staged.py)."""
        if stage and self.live_gate is not None:
            stage = self.live_gate(commit)
        if stage:
            staged = StagedDeployment.of(commit, origin, merge)
            signals.reached(signals.Stage.STAGED)
            with signals.critical():
                write_staged(self.sysroot, staged)
            return LayerResult(changes, requested, commit=commit, staged=staged)
        dep = deploy(self.sysroot, commit, origin, merge)
        signals.reached(signals.Stage.DEPLOYED)
        return LayerResult(changes, requested, deployment=dep, commit=commit)
