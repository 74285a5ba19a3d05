"""Access to an OSTree sysroot: the running host's or a folder's.

A folder sysroot (``--sysroot DIR``) is an OSTree sysroot that is not the
running system; its booted deployment is named by the marker
``DIR/run/lulayer/booted`` (one line: the deployment's folder relative to DIR)
and its live root is that folder. Without ``--sysroot`` lulayer works on the
running system, whose booted deployment libostree finds itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import overload

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from lulayer.errors import SysrootError  # noqa: E402
from lulayer.imageref import BadImageReference, ImageReference  # noqa: E402

BOOTED_MARKER = Path("run/lulayer/booted")
OSTREE_BOOTED = Path("/run/ostree-booted")  # made by ostree-prepare-root on a host booted from a deployment


class RefspecKind(StrEnum):
    """What an origin follows: rpm-ostree's RefspecType (rust/src/treefile.rs ``get_base_refspec``,
    rust/src/core.rs ``refspec_classify``)."""

    OSTREE = "ostree"  # [origin] refspec or baserefspec: REMOTE:REF or REF
    CHECKSUM = "checksum"  # a refspec that is a commit checksum: pinned, nothing to upgrade to
    CONTAINER = "container"  # [origin] container-image-reference


# The [origin] keys that say what a deployment follows, as rpm-ostree reads them (rust/src/origin.rs
# origin_to_treefile_inner: refspec, else baserefspec; or container-image-reference; never both).
_ORIGIN_HINT = ("keep exactly one of [origin] refspec, baserefspec or container-image-reference in the .origin "
                "file beside the deployment (rpm-ostree reads the same keys)")
_CHECKSUM = re.compile(r"[0-9a-f]{64}")
# An [overrides] replace entry's source: rpm-ostree knows only repo=NAME (rust/src/daemon.rs parse_override_source).
_REPO_SOURCE = "repo="


@dataclass(frozen=True)
class RepoReplacement:
    """Base packages replaced by what the repository `repo` offers: one `[overrides] replace` entry,
    `repo=NAME,PKG,...` (rust/src/origin.rs origin_to_treefile_inner)."""

    repo: str
    packages: tuple[str, ...]

    @classmethod
    def parse(cls, entry: str) -> RepoReplacement:
        source, *packages = entry.split(",")
        if not source.startswith(_REPO_SOURCE) or not source.removeprefix(_REPO_SOURCE):
            raise SysrootError(f"the deployment's .origin has an [overrides] replace entry {entry!r} from an "
                               "unknown source", hint="write it as repo=NAME,PKG,... (rpm-ostree reads the same)")
        return cls(source.removeprefix(_REPO_SOURCE), tuple(p for p in packages if p))

    def __str__(self) -> str:
        return ",".join((f"{_REPO_SOURCE}{self.repo}", *self.packages))


@dataclass(frozen=True)
class Overrides:
    """What a deployment changes of its base image: rpm-ostree's `[overrides]` keys (rust/src/origin.rs).

    ``remove`` holds base package names; ``replace`` the packages that follow a repository;
    ``replace_local`` RPM files stored in the repository, as rpm-ostree's SHA256:NEVRA entries
    (SHA256 of the RPM header, src/daemon/rpmostreed-transaction-types.cxx import_many_local_rpms).
    """

    remove: tuple[str, ...] = ()
    replace: tuple[RepoReplacement, ...] = ()
    replace_local: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.remove or self.replaced_names or self.replace_local)

    @property
    def replaced_names(self) -> tuple[str, ...]:
        """The names replaced from repositories."""
        return tuple(p for r in self.replace for p in r.packages)

    @property
    def local_nevras(self) -> tuple[str, ...]:
        return tuple(e.split(":", 1)[-1] for e in self.replace_local)

    def names(self) -> dict[str, str]:
        """Every package name with an override, and its kind (remove, replace, replace-local)."""
        out = {n: "replace" for n in self.replaced_names}
        out |= {nevra_name(n): "replace-local" for n in self.local_nevras}
        return out | {n: "remove" for n in self.remove}


def nevra_name(nevra: str) -> str:
    """The name of NAME-[EPOCH:]VERSION-RELEASE.ARCH."""
    return nevra.rsplit("-", 2)[0]


@dataclass(frozen=True)
class Origin:
    """The parts of a deployment's .origin that lulayer reads and writes.

    The keys are rpm-ostree's (rust/src/origin.rs), so either tool reads the
    other's: ``[origin] refspec`` when nothing is layered, ``baserefspec`` when
    something is, or ``container-image-reference`` either way; ``[packages] requested``, and
    ``requested-local`` (``SHA256:NEVRA`` of each local RPM, layering/localpkg.py).
    Every other key of the file is kept as it is (``keyfile_data``). ``refspec`` is what
    rpm-ostree calls the refspec of either kind: an OSTree ref, a checksum, or the image
    reference exactly as the file has it.
    """

    refspec: str
    requested: tuple[str, ...] = ()
    keyfile_data: str = ""
    kind: RefspecKind = RefspecKind.OSTREE
    requested_local: tuple[str, ...] = ()
    overrides: Overrides = Overrides()

    @classmethod
    def from_keyfile(cls, kf: GLib.KeyFile) -> Origin:
        refspec = _keyfile_get(kf, "origin", "refspec") or _keyfile_get(kf, "origin", "baserefspec")
        image = _keyfile_get(kf, "origin", "container-image-reference")
        if refspec and image:
            raise SysrootError("the deployment's .origin has both [origin] refspec/baserefspec and "
                               "container-image-reference", hint=_ORIGIN_HINT)
        if image:
            kind, refspec = RefspecKind.CONTAINER, image
        elif refspec:
            kind = RefspecKind.CHECKSUM if _CHECKSUM.fullmatch(refspec) else RefspecKind.OSTREE
        else:
            raise SysrootError("the deployment's .origin has none of [origin] refspec, baserefspec, "
                               "container-image-reference", hint=_ORIGIN_HINT)
        overrides = Overrides(
            remove=tuple(_keyfile_list(kf, "overrides", "remove")),
            replace=tuple(RepoReplacement.parse(e) for e in _keyfile_list(kf, "overrides", "replace")),
            replace_local=tuple(_keyfile_list(kf, "overrides", "replace-local")),
        )
        data, _ = kf.to_data()
        return cls(refspec=refspec, requested=tuple(_keyfile_list(kf, "packages", "requested")), keyfile_data=data,
                   kind=kind, requested_local=tuple(_keyfile_list(kf, "packages", "requested-local")),
                   overrides=overrides)

    @classmethod
    def from_data(cls, data: str) -> Origin:
        """The origin in the text of a .origin key file."""
        kf = GLib.KeyFile()
        try:
            kf.load_from_data(data, len(data.encode()), GLib.KeyFileFlags.KEEP_COMMENTS)
        except GLib.Error as e:
            raise SysrootError(f"a recorded .origin cannot be read: {e.message}") from e
        return cls.from_keyfile(kf)

    def with_requested(self, requested: Sequence[str], local: Sequence[str] | None = None) -> Origin:
        """With these requests (and these requested-local entries, when given)."""
        return replace(self, requested=tuple(sorted(set(requested))),
                       requested_local=self.requested_local if local is None else tuple(sorted(set(local))))

    def with_overrides(self, overrides: Overrides) -> Origin:
        return replace(self, overrides=Overrides(
            remove=tuple(sorted(set(overrides.remove))),
            replace=tuple(r for r in overrides.replace if r.packages),
            replace_local=tuple(sorted(set(overrides.replace_local))),
        ))

    def image(self) -> ImageReference:
        """The container image a container origin follows.

        An image reference in a form ostree-ext does not read is refused here, where it is
        needed (upgrade); everything else keeps it as it is.
        """
        if self.kind is not RefspecKind.CONTAINER:
            raise SysrootError(f"the deployment follows {self.refspec}, not a container image")
        try:
            return ImageReference.parse(self.refspec)
        except BadImageReference as e:
            raise SysrootError(f"lulayer cannot read the container-image-reference {self.refspec!r}: {e}",
                               hint="`rpm-ostree upgrade` or `bootc upgrade` upgrade the image; lulayer keeps "
                                    "the reference as it is") from e

    def to_keyfile(self) -> GLib.KeyFile:
        """The origin as a key file, keeping every key lulayer does not own.

        As rpm-ostree writes it (rust/src/origin.rs treefile_to_origin_inner): an OSTree
        origin says ``baserefspec`` when the deployment needs local assembly, else
        ``refspec``; a container-image-reference is never rewritten; ``[packages] requested``
        is there only when something is requested (an empty ``[packages]`` group would make
        bootc take the deployment for an rpm-ostree one: lib/src/utils.rs origin_has_rpmostree_stuff).
        """
        kf = GLib.KeyFile()
        if self.keyfile_data:
            kf.load_from_data(self.keyfile_data, len(self.keyfile_data.encode()), GLib.KeyFileFlags.KEEP_COMMENTS)
        ov = self.overrides
        for group, key, values in (("packages", "requested", self.requested),
                                   ("packages", "requested-local", self.requested_local),
                                   ("overrides", "remove", ov.remove),
                                   ("overrides", "replace", tuple(str(r) for r in ov.replace)),
                                   ("overrides", "replace-local", ov.replace_local)):
            if values:
                kf.set_string_list(group, key, list(values))
            else:
                _keyfile_remove(kf, group, key)
        empty = [g for g in ("packages", "overrides") if kf.has_group(g) and not kf.get_keys(g)[0]]
        if empty:
            for group in empty:
                kf.remove_group(group)
            # GLib keeps the blank line that parted the groups; rpm-ostree's file has none.
            data = kf.to_data()[0].rstrip("\n") + "\n"
            kf = GLib.KeyFile()
            kf.load_from_data(data, len(data.encode()), GLib.KeyFileFlags.KEEP_COMMENTS)
        if self.kind is RefspecKind.CONTAINER:
            if _keyfile_get(kf, "origin", "container-image-reference") != self.refspec:
                kf.set_string("origin", "container-image-reference", self.refspec)
            return kf
        key, other = ("baserefspec", "refspec") if _may_require_local_assembly(kf) else ("refspec", "baserefspec")
        if _keyfile_get(kf, "origin", key) != self.refspec or _keyfile_get(kf, "origin", other) is not None:
            # Rewritten only when it changes: GLib puts a new key after the blank line that ends the group.
            for k in (key, other):
                _keyfile_remove(kf, "origin", k)
            kf.set_string("origin", key, self.refspec)
        return kf


def _may_require_local_assembly(kf: GLib.KeyFile) -> bool:
    """rpm-ostree's Treefile::may_require_local_assembly (rust/src/treefile.rs) over the key file:
    packages or overrides of any kind, a regenerated initramfs, or cliwrap."""
    lists = (("packages", "requested"), ("packages", "requested-local"),
             ("packages", "requested-local-fileoverride"), ("overrides", "remove"),
             ("overrides", "replace-local"), ("rpmostree", "initramfs-etc"))
    if any(_keyfile_list(kf, group, key) for group, key in lists):
        return True
    # An [overrides] replace entry is "repo=NAME,PKG,...": it counts once it names a package.
    if any("," in entry for entry in _keyfile_list(kf, "overrides", "replace")):
        return True
    return _keyfile_bool(kf, "rpmostree", "regenerate-initramfs") or _keyfile_bool(kf, "rpmostree", "ex-cliwrap")


def _keyfile_get(kf: GLib.KeyFile, group: str, key: str) -> str | None:
    try:
        value: str = kf.get_string(group, key)
    except GLib.Error:
        return None
    return value


def _keyfile_list(kf: GLib.KeyFile, group: str, key: str) -> list[str]:
    try:
        return [v for v in kf.get_string_list(group, key) if v]
    except GLib.Error:
        return []


def _keyfile_bool(kf: GLib.KeyFile, group: str, key: str) -> bool:
    try:
        return bool(kf.get_boolean(group, key))
    except GLib.Error:
        return False


def _keyfile_remove(kf: GLib.KeyFile, group: str, key: str) -> None:
    with suppress(GLib.Error):
        kf.remove_key(group, key)


# What lulayer keeps in a deployment's backing folder, ostree/deploy/OS/backing/CHECKSUM.SERIAL/.
LIVE_BACKING = "lulayer-live"  # the live overlay's upper and work folders (apply/live.py)
ETC_RECORD = "lulayer-etc.json"  # the /etc files live applies added (apply/etc.py)


def deployment_name(d: OSTree.Deployment) -> str:
    """A deployment's folder name, CHECKSUM.SERIAL: how lulayer and libostree name it."""
    return f"{d.get_csum()}.{d.get_deployserial()}"


@dataclass(frozen=True)
class Deployment:
    osname: str
    checksum: str
    serial: int
    index: int
    path: Path
    origin: Origin
    booted: bool
    staged: bool

    @property
    def name(self) -> str:
        """The deployment's folder name, CHECKSUM.SERIAL."""
        return f"{self.checksum}.{self.serial}"

    @property
    def id(self) -> str:
        """rpm-ostree's deployment id, OSNAME-CHECKSUM.SERIAL."""
        return f"{self.osname}-{self.name}"


class Sysroot:
    """An opened sysroot. ``folder`` is True for ``--sysroot DIR``."""

    def __init__(self, path: Path | None) -> None:
        self.folder = path is not None
        self.path = (path or Path("/")).resolve()
        if self.folder and not (self.path / "ostree" / "repo").is_dir():
            raise SysrootError(
                f"{self.path} is not an OSTree sysroot: it has no ostree/repo",
                hint="point --sysroot at a folder made by `ostree admin init-fs`",
            )
        if self.folder:
            self.ostree = OSTree.Sysroot.new(Gio.File.new_for_path(str(self.path)))
        else:
            if not OSTREE_BOOTED.exists():
                raise SysrootError(
                    "this system was not booted from an OSTree deployment",
                    hint="use --sysroot DIR to work on a folder sysroot",
                )
            self.ostree = OSTree.Sysroot.new_default()
        self.reload()

    def reload(self) -> None:
        try:
            self.ostree.load(None)
        except GLib.Error as e:
            raise SysrootError(f"cannot load the sysroot at {self.path}: {e.message}") from e
        _, self.repo = self.ostree.get_repo(None)
        self._booted_name = self._find_booted()

    # --- every path lulayer keeps under a sysroot ------------------------------------------

    @property
    def run_dir(self) -> Path:
        """The running system's /run (a folder sysroot's own run/): gone at reboot."""
        return self.path / "run" if self.folder else Path("/run")

    @property
    def lulayer_dir(self) -> Path:
        """lulayer's persistent state beside the repository."""
        return self.path / "ostree" / "lulayer"

    @property
    def staged_record(self) -> Path:
        """The deployment --live staged for the next boot and not yet written (staged.py)."""
        return self.lulayer_dir / "staged.json"

    @property
    def base_checkouts(self) -> Path:
        """Cached hardlink checkouts of base commits, to compose on (never written)."""
        return self.lulayer_dir / "base"

    @property
    def compose_scratch(self) -> Path:
        """Where compose makes its overlay layers: the repository's tmp, on its file system."""
        return self.path / "ostree" / "repo" / "tmp"

    @property
    def lock_owner(self) -> Path:
        """Who holds the sysroot lock (lock.py): OFD locks carry no pid."""
        return self.run_dir / "lulayer" / "lock.owner"

    @property
    def finalize_log(self) -> Path:
        """The output of the detached writer of a staged deployment."""
        return self.run_dir / "lulayer" / "finalize.log"

    def var_dir(self, osname: str) -> Path:
        return self.path / "ostree" / "deploy" / osname / "var"

    @property
    def cache_dir(self) -> Path:
        """Repository metadata and RPMs, in the booted OS's /var/cache."""
        return self.var_dir(self.booted().osname) / "cache" / "lulayer"

    def backing_dir(self, d: Deployment) -> Path:
        """The live overlay's upper and work folders for deployment d (apply/live.py)."""
        return self.path / "ostree" / "deploy" / d.osname / "backing" / d.name / LIVE_BACKING

    def etc_record(self, d: Deployment) -> Path:
        """The /etc files live applies added to d's /etc (apply/etc.py): beside its backing folder,
        kept as long as the deployment is."""
        return self.backing_dir(d).parent / ETC_RECORD

    def deployment_state_dir(self, d: Deployment) -> Path:
        """Where state that must not outlive a boot goes (rpm-ostree's stamp folder)."""
        return self.run_dir / "ostree" / "deployment-state" / d.name

    def _find_booted(self) -> str | None:
        if not self.folder:
            booted = self.ostree.get_booted_deployment()
            return deployment_name(booted) if booted else None
        marker = self.path / BOOTED_MARKER
        try:
            rel = marker.read_text().strip()
        except FileNotFoundError:
            raise SysrootError(
                f"{marker} is missing: no deployment is marked booted in this folder sysroot",
                hint=f"write the booted deployment's folder, relative to {self.path}, into it",
            ) from None
        target = (self.path / rel).resolve()
        for d in self.ostree.get_deployments():
            if (self.path / self.ostree.get_deployment_dirpath(d)).resolve() == target:
                return deployment_name(d)
        raise SysrootError(
            f"{marker} names {rel!r}, which is not a deployment of this sysroot",
            hint="point it at one of the folders under ostree/deploy/OSNAME/deploy/",
        )

    def _wrap(self, index: int, d: OSTree.Deployment) -> Deployment:
        name = deployment_name(d)
        kf = d.get_origin()
        if kf is None:
            raise SysrootError(f"deployment {name} has no .origin file", hint="redeploy it with ostree admin deploy")
        path = self.path / self.ostree.get_deployment_dirpath(d)
        try:
            origin = Origin.from_keyfile(kf)
        except SysrootError as e:
            raise SysrootError(f"{e.message} ({path}.origin)", hint=e.hint) from e
        return Deployment(
            osname=d.get_osname(),
            checksum=d.get_csum(),
            serial=d.get_deployserial(),
            index=index,
            path=path,
            origin=origin,
            booted=name == self._booted_name,
            staged=d.is_staged(),
        )

    def deployments(self) -> tuple[Deployment, ...]:
        """Every deployment, in boot order (index 0 boots next)."""
        return tuple(self._wrap(i, d) for i, d in enumerate(self.ostree.get_deployments()))

    def ostree_deployments(self) -> list[OSTree.Deployment]:
        return list(self.ostree.get_deployments())

    def booted(self) -> Deployment:
        for d in self.deployments():
            if d.booted:
                return d
        raise SysrootError(
            "no booted deployment found",
            hint="on a folder sysroot, write the booted marker run/lulayer/booted",
        )

    def pending(self) -> Deployment | None:
        """The deployment that boots next, when it is not the booted one."""
        deps = self.deployments()
        if deps and not deps[0].booted:
            return deps[0]
        return None

    def rollback(self) -> Deployment | None:
        """The first deployment after the booted one in boot order."""
        seen_booted = False
        for d in self.deployments():
            if seen_booted:
                return d
            seen_booted = d.booted
        return None

    def merge_deployment(self) -> Deployment:
        """What a new deployment builds on: the pending one, else the booted one."""
        return self.pending() or self.booted()

    def ostree_deployment(self, d: Deployment) -> OSTree.Deployment:
        for od in self.ostree.get_deployments():
            if deployment_name(od) == d.name:
                return od
        raise SysrootError(f"deployment {d.name} is gone", hint="run `lulayer status` and retry")


@overload
def resolve_ref(repo: OSTree.Repo, refspec: str) -> str: ...
@overload
def resolve_ref(repo: OSTree.Repo, refspec: str, *, allow_missing: bool) -> str | None: ...
def resolve_ref(repo: OSTree.Repo, refspec: str, *, allow_missing: bool = False) -> str | None:
    """The commit a refspec (``remote:ref`` or ``ref``) points at in the local repository
    (with allow_missing, None when there is no such ref)."""
    try:
        _, rev = repo.resolve_rev(refspec, allow_missing)
        if rev is None and ":" in refspec:
            _, rev = repo.resolve_rev(refspec.split(":", 1)[1], allow_missing)
    except GLib.Error as e:
        raise SysrootError(f"cannot resolve {refspec!r} in the repository: {e.message}") from e
    result: str | None = rev
    return result


def commit_timestamp(repo: OSTree.Repo, checksum: str) -> int:
    _, commit = repo.load_variant(OSTree.ObjectType.COMMIT, checksum)
    result: int = OSTree.commit_get_timestamp(commit)
    return result


def commit_metadata(repo: OSTree.Repo, checksum: str) -> dict[str, object]:
    _, commit = repo.load_variant(OSTree.ObjectType.COMMIT, checksum)
    meta: dict[str, object] = commit.get_child_value(0).unpack()
    return meta


def require_root() -> None:
    if os.geteuid() != 0:
        raise SysrootError("lulayer must run as root to change deployments", hint="run it with sudo")
