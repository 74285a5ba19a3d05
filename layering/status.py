"""What `lulayer status` reports, as values; the CLI only formats them.

`status --json` is rpm-ostree's: tools written for rpm-ostree (its client crate, Zincati,
Ansible) parse it. Each deployment is the dict rpm-ostree's daemon builds
(rust/src/daemon.rs `deployment_populate_variant`, src/daemon/rpmostreed-deployment-utils.cxx
`rpmostreed_deployment_generate_variant`), serialized as json-glib serializes a GVariant
(src/app/rpmostree-builtin-status.cxx): a key that is unset is left out, never null.
Deployments come in boot order, so a deployment staged for the next boot is deployments[0]
with `staged: true`. lulayer's own keys carry a `lulayer-` prefix. tests/test_status_json.py
lists the keys and their types with the files they come from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from gi.repository import GLib, OSTree

from lulayer.apply.etc import added_files
from lulayer.apply.state import read_state
from lulayer.errors import LulayerError
from lulayer.layering.layer import ImageState, base_commit_of, layered_packages
from lulayer.layering.staged import StagedDeployment, being_written
from lulayer.layering.staged import read as read_staged
from lulayer.lock import lulayer_holder
from lulayer.rpmdb.db import commit_packages, tree_dbpath
from lulayer.rpmdb.model import Package, PackageChanges
from lulayer.sysroot import Deployment, Origin, RefspecKind, Sysroot, resolve_ref

# Commit metadata rpm-ostree leaves out of base-commit-meta and layered-commit-meta: big, or
# shown under keys of their own (rpmostreed-deployment-utils.cxx, filter_commit_meta).
FILTERED_COMMIT_META = frozenset({
    "rpmostree.rpmdb.pkglist", "rpmostree.advisories", "rpmostree.packages", "rpmostree.modules",
    "rpmostree.spec", "rpmostree.removed-base-packages", "rpmostree.replaced-base-packages",
    "rpmostree.replaced-base-remote-packages",
})
# The layered requests a layered commit was composed with ("packages" in status): rpm-ostree
# writes rpmostree.packages (src/libpriv/rpmostree-core.cxx), lulayer lulayer.requested.
LAYERED_REQUESTS_META = ("lulayer.requested", "rpmostree.packages")


def variant_json(v: GLib.Variant) -> object:
    """A GVariant as json-glib's json_gvariant_serialize makes it (json-glib/json-gvariant.c):
    dictionaries are objects, other arrays and tuples are arrays (bytes too), variants their
    content, an empty maybe null."""
    t = v.get_type_string()
    if t == "b":
        return bool(v.get_boolean())
    if t in ("y", "n", "q", "i", "u", "x", "t", "h"):
        return int(v.unpack())
    if t == "d":
        return float(v.get_double())
    if t in ("s", "o", "g"):
        return str(v.get_string())
    if t == "v":
        return variant_json(v.get_variant())
    if t.startswith("m"):
        return None if v.n_children() == 0 else variant_json(v.get_child_value(0))
    if t.startswith("a{"):
        out: dict[str, object] = {}
        for i in range(v.n_children()):
            entry = v.get_child_value(i)
            out[str(entry.get_child_value(0).unpack())] = variant_json(entry.get_child_value(1))
        return out
    if t == "ay":
        return list(v.get_data_as_bytes().get_data() or b"")
    return [variant_json(v.get_child_value(i)) for i in range(v.n_children())]


def _package_of(v: object) -> Package | None:
    """A package as rpm-ostree's override keys hold it, (nevra, name, epoch, version, release,
    arch) (src/libpriv/rpmostree-core.cxx gv_nevra_from_pkg), read back from its JSON."""
    if isinstance(v, list) and len(v) == 6:
        _, name, epoch, version, release, arch = v
        return Package(str(name), int(epoch), str(version), str(release), str(arch))
    return None


@dataclass(frozen=True)
class BaseOverrides:
    """What a layered commit changed of its base: removed packages, and (new, old) replacements,
    local ones and by source (repo=NAME), from rpm-ostree's commit keys."""

    removed: tuple[Package, ...] = ()
    local: tuple[tuple[Package, Package], ...] = ()
    remote: Mapping[str, tuple[tuple[Package, Package], ...]] = field(default_factory=dict)


def _pairs(v: object) -> tuple[tuple[Package, Package], ...]:
    out = []
    for pair in v if isinstance(v, list) else []:
        if isinstance(pair, list) and len(pair) == 2:
            new, old = _package_of(pair[0]), _package_of(pair[1])
            if new is not None and old is not None:
                out.append((new, old))
    return tuple(sorted(out))


@dataclass(frozen=True)
class CommitInfo:
    """What status shows of a commit: version, timestamp, metadata (as JSON values)."""

    checksum: str
    version: str | None = None
    timestamp: int = 0
    metadata: Mapping[str, object] = field(default_factory=dict)

    @property
    def shown_metadata(self) -> dict[str, object]:
        return {k: v for k, v in self.metadata.items() if k not in FILTERED_COMMIT_META}

    @property
    def base_overrides(self) -> BaseOverrides:
        """The overrides the commit was composed with (rpmostree.removed-base-packages,
        rpmostree.replaced-base-packages, rpmostree.replaced-base-remote-packages)."""
        removed = self.metadata.get("rpmostree.removed-base-packages")
        remote = self.metadata.get("rpmostree.replaced-base-remote-packages")
        return BaseOverrides(
            removed=tuple(sorted(p for v in (removed if isinstance(removed, list) else [])
                                 if (p := _package_of(v)) is not None)),
            local=_pairs(self.metadata.get("rpmostree.replaced-base-packages")),
            remote={str(k): _pairs(v) for k, v in (remote.items() if isinstance(remote, dict) else [])
                    if _pairs(v)},
        )

    @property
    def layered_requests(self) -> list[str]:
        for key in LAYERED_REQUESTS_META:
            value = self.metadata.get(key)
            if isinstance(value, list):
                return [str(x) for x in value]
        return []


def commit_info(repo: OSTree.Repo, checksum: str) -> CommitInfo:
    _, commit = repo.load_variant(OSTree.ObjectType.COMMIT, checksum)
    meta = variant_json(commit.get_child_value(0))
    assert isinstance(meta, dict)
    version = meta.get("version")
    return CommitInfo(checksum, version if isinstance(version, str) else None,
                      int(OSTree.commit_get_timestamp(commit)), meta)


def _origin_lists(origin: Origin) -> dict[str, object]:
    """The origin's requests as rpm-ostree's daemon lists them (rust/src/daemon.rs,
    deployment_populate_variant_origin): every list present, even empty, but
    requested-base-remote-replacements, an a(sas) of (repo=NAME, packages) only when set."""
    kf = origin.to_keyfile()

    def strings(group: str, key: str) -> list[str]:
        try:
            return [s for s in kf.get_string_list(group, key) if s]
        except GLib.Error:
            return []

    def nevras(group: str, key: str) -> list[str]:  # SHA256:NEVRA entries, listed by NEVRA
        return sorted(s.split(":", 1)[-1] for s in strings(group, key))

    try:
        regenerate = bool(kf.get_boolean("rpmostree", "regenerate-initramfs"))
    except GLib.Error:
        regenerate = False
    remote = {"requested-base-remote-replacements": [[f"repo={r.repo}", list(r.packages)]
                                                     for r in origin.overrides.replace]}
    return {
        **(remote if origin.overrides.replace else {}),
        "requested-packages": sorted(origin.requested),
        "requested-local-packages": nevras("packages", "requested-local"),
        "requested-local-fileoverride-packages": nevras("packages", "requested-local-fileoverride"),
        "requested-base-removals": sorted(strings("overrides", "remove")),
        "requested-base-local-replacements": nevras("overrides", "replace-local"),
        "regenerate-initramfs": regenerate,
    }


def _origin_keys(origin: Origin, image_digest: str | None) -> dict[str, object]:
    """Where the deployment comes from, as rpmostreed-deployment-utils.cxx writes it: an ostree
    refspec is `origin`; a container image is `container-image-reference`, with
    `container-image-reference-digest` when its merge commit names the manifest digest."""
    if origin.kind is not RefspecKind.CONTAINER:
        return {"origin": origin.refspec}
    out: dict[str, object] = {"container-image-reference": origin.refspec}
    if image_digest is not None:
        out["container-image-reference-digest"] = image_digest
    return out


def _deployment_json(*, osname: str, checksum: str, serial: int, booted: bool, staged: bool, pinned: bool,
                     unlocked: str, origin: Origin, commit: CommitInfo | None, base: CommitInfo | None,
                     remote: Mapping[str, object], image_digest: str | None) -> dict[str, object]:
    """One deployment as rpm-ostree's daemon describes it (see the module docstring)."""
    out: dict[str, object] = {
        "id": f"{osname}-{checksum}.{serial}",
        "osname": osname,
        "checksum": checksum,
        "serial": serial,
        "booted": booted,
        "staged": staged,
        "pinned": pinned,
        "unlocked": unlocked,
        **_origin_lists(origin),
        **_origin_keys(origin, image_digest),
        **remote,
    }
    commit = commit or CommitInfo(checksum)
    base = base or commit
    if base.checksum != commit.checksum:  # layered
        out["base-checksum"] = base.checksum
        if base.version is not None:
            out["base-version"] = base.version
        if base.timestamp:
            out["base-timestamp"] = base.timestamp
        out["layered-commit-meta"] = commit.shown_metadata
    if isinstance(base.metadata.get("ostree.endoflife"), str):
        out["endoflife"] = base.metadata["ostree.endoflife"]
    out["base-commit-meta"] = base.shown_metadata
    if commit.version is not None:
        out["version"] = commit.version
    if commit.timestamp:
        out["timestamp"] = commit.timestamp
    layered_meta = commit.metadata if base.checksum != commit.checksum else {}
    out["packages"] = commit.layered_requests if base.checksum != commit.checksum else []
    out["base-removals"] = layered_meta.get("rpmostree.removed-base-packages", [])
    out["base-local-replacements"] = layered_meta.get("rpmostree.replaced-base-packages", [])
    out["base-remote-replacements"] = layered_meta.get("rpmostree.replaced-base-remote-packages", {})
    return out


def _inactive(requested: tuple[str, ...], commit: CommitInfo | None, base_checksum: str) -> tuple[str, ...]:
    if commit is None:  # not read: take every request as layered
        return ()
    layered = set(commit.layered_requests) if commit.checksum != base_checksum else set()
    return tuple(r for r in requested if r not in layered)


@dataclass(frozen=True)
class DeploymentStatus:
    deployment: Deployment
    base_checksum: str
    version: str | None
    layered: tuple[Package, ...]
    pending: bool
    rollback: bool
    superseded: bool = False  # boots next only until the staged deployment is written, which drops it
    commit: CommitInfo | None = None
    base: CommitInfo | None = None
    pinned: bool = False
    unlocked: str = "none"
    remote: Mapping[str, object] = field(default_factory=dict)  # gpg-enabled / remote-error, pending-base-*
    image_digest: str | None = None  # a container deployment's image, from its base commit's metadata
    live_etc: tuple[str, ...] = ()  # /etc files live applies added to its /etc (apply/etc.py)

    @property
    def inactive_requests(self) -> tuple[str, ...]:
        """Requests the commit does not layer: the base image provides them (rpm-ostree's InactiveRequests)."""
        return _inactive(self.deployment.origin.requested, self.commit, self.base_checksum)

    def to_json(self) -> dict[str, object]:
        d = self.deployment
        commit = self.commit or CommitInfo(d.checksum, self.version)
        base = self.base or (commit if self.base_checksum == d.checksum else CommitInfo(self.base_checksum))
        out = _deployment_json(osname=d.osname, checksum=d.checksum, serial=d.serial, booted=d.booted,
                               staged=d.staged, pinned=self.pinned, unlocked=self.unlocked, origin=d.origin,
                               commit=commit, base=base, remote=self.remote, image_digest=self.image_digest)
        out.update({
            "lulayer-pending": self.pending,
            "lulayer-rollback": self.rollback,
            "lulayer-superseded": self.superseded,
            "lulayer-layered-nevras": [p.nevra for p in self.layered],
            "lulayer-live-etc-added": list(self.live_etc),
        })
        return out


@dataclass(frozen=True)
class LiveStatus:
    commit: str  # what the live /usr holds
    inprogress: str | None  # an interrupted update's target
    replaced: bool
    diff: PackageChanges  # live packages against the booted commit's
    transient: tuple[str, ...] = ()  # installed live only: gone at reboot, the next boot lacks them

    def json_keys(self, booted: str) -> dict[str, object]:
        """rpm-ostree's live keys (rust/src/daemon.rs from rust/src/live.rs's state): the target of
        an interrupted update, and the commit the live /usr holds (its LIVE_REF, named
        `live-replaced` whether files were replaced or only added), each only when set."""
        out: dict[str, object] = {}
        if self.inprogress:
            out["live-inprogress"] = self.inprogress
        if self.commit != booted:
            out["live-replaced"] = self.commit
        out["lulayer-live-replaced-files"] = self.replaced
        out["lulayer-live-diff"] = self.diff.to_json()
        # rpm-ostree has no live-only installs (issues 3993, 4778), so no key for them.
        out["lulayer-transient-packages"] = list(self.transient)
        return out


@dataclass(frozen=True)
class StagedStatus:
    """A deployment recorded for the next boot and not yet written (layering/staged.py)."""

    staged: StagedDeployment
    osname: str
    refspec: str
    base_checksum: str
    layered: tuple[Package, ...]
    being_written: bool  # a detached lulayer child is writing it now
    serial: int = 0  # the serial libostree will give it
    commit: CommitInfo | None = None
    base: CommitInfo | None = None
    remote: Mapping[str, object] = field(default_factory=dict)
    image_digest: str | None = None

    @property
    def inactive_requests(self) -> tuple[str, ...]:
        return _inactive(self.staged.requested, self.commit, self.base_checksum)

    def to_json(self) -> dict[str, object]:
        s = self.staged
        commit = self.commit or CommitInfo(s.commit)
        base = self.base or (commit if self.base_checksum == s.commit else CommitInfo(self.base_checksum))
        out = _deployment_json(osname=self.osname, checksum=s.commit, serial=self.serial, booted=False, staged=True,
                               pinned=False, unlocked="none", origin=Origin.from_data(s.origin), commit=commit,
                               base=base, remote=self.remote, image_digest=self.image_digest)
        out.update({
            "lulayer-pending": True,
            "lulayer-rollback": False,
            "lulayer-superseded": False,
            "lulayer-layered-nevras": [p.nevra for p in self.layered],
            "lulayer-builds-on": s.merge,
            "lulayer-being-written": self.being_written,
        })
        if s.error:
            out["lulayer-write-error"] = s.error
        return out


@dataclass(frozen=True)
class Status:
    deployments: tuple[DeploymentStatus, ...]
    pending_diff: PackageChanges | None  # the pending (or staged) deployment against the booted one
    live: LiveStatus | None = None
    staged: StagedStatus | None = None
    transaction: tuple[str, str, str] | None = None  # a lulayer command holding the sysroot lock

    def to_json(self, *, booted_only: bool = False) -> dict[str, object]:
        """rpm-ostree's `status --json` (rpmostree-builtin-status.cxx): the deployments in boot
        order, a staged one first; with booted_only the booted one alone (`--booted`)."""
        deps = [self.staged.to_json()] if self.staged is not None else []
        for ds in self.deployments:
            d = ds.to_json()
            if ds.deployment.booted and self.live is not None:
                d.update(self.live.json_keys(ds.deployment.checksum))
            deps.append(d)
        if booted_only:
            deps = [d for d in deps if d["booted"]]
        # rpm-ostreed's transaction is (title, client, path); no cached update or update driver here.
        return {"deployments": deps, "transaction": list(self.transaction) if self.transaction else None,
                "cached-update": None, "update-driver": None}

    @property
    def pending_deployment(self) -> bool:
        """What `status --pending-exit-77` asks (rpmostree-builtin-status.cxx): more than one
        deployment, and the first in boot order is not the booted one."""
        return self.staged is not None or (len(self.deployments) > 1 and not self.deployments[0].deployment.booted)


def _remote_status(sysroot: Sysroot, origin: Origin, base: str) -> dict[str, object]:
    """gpg-enabled (or remote-error) and pending-base-*, as rpm-ostree adds them for an ostree
    refspec (rust/src/daemon.rs variant_add_remote_status; rpmostreed-deployment-utils.cxx);
    nothing for a container image."""
    out: dict[str, object] = {}
    if origin.kind is RefspecKind.CONTAINER:
        return out
    refspec = origin.refspec
    _, remote, _ = OSTree.parse_refspec(refspec)
    if remote:
        try:
            out["gpg-enabled"] = bool(sysroot.repo.remote_get_gpg_verify(remote))
        except GLib.Error as e:
            out["remote-error"] = e.message
    else:
        out["gpg-enabled"] = False
    try:
        newest = resolve_ref(sysroot.repo, refspec)
    except LulayerError:  # a ref that is gone (after a rebase) is no error for status
        newest = None
    if newest and newest != base:
        pending = commit_info(sysroot.repo, newest)
        out["pending-base-checksum"] = newest
        if pending.version is not None:
            out["pending-base-version"] = pending.version
        if pending.timestamp:
            out["pending-base-timestamp"] = pending.timestamp
    return out


def _unlocked(od: OSTree.Deployment, *, live: bool) -> str:
    """libostree's unlock state; "transient" while lulayer's live overlay is on the booted /usr,
    as rpm-ostree shows a deployment after apply-live (its overlay is ostree's transient unlock)."""
    state = str(OSTree.Deployment.unlocked_state_to_string(od.get_unlocked()))
    return "transient" if live and state == "none" else state


def _next_serial(deployments: tuple[Deployment, ...], osname: str, checksum: str) -> int:
    """The serial libostree gives a new deployment of checksum: one more than the highest of
    the same osname and checksum, else 0 (ostree-sysroot-deploy.c, allocate_deployserial)."""
    serials = [d.serial for d in deployments if d.osname == osname and d.checksum == checksum]
    return max(serials) + 1 if serials else 0


def _image(sysroot: Sysroot, origin: Origin, base_checksum: str) -> ImageState:
    """A container deployment's image, from its merge commit; nothing for an ostree refspec."""
    return ImageState.of(sysroot.repo, base_checksum) if origin.kind is RefspecKind.CONTAINER else ImageState()


def read_status(sysroot: Sysroot) -> Status:
    deps = sysroot.deployments()
    booted = sysroot.booted()
    pending = sysroot.pending()
    rollback = sysroot.rollback()
    staged = read_staged(sysroot)
    if staged is not None and pending is not None and pending.checksum == staged.commit:
        staged = None  # written; its record is about to go
    dbpath: PurePosixPath = tree_dbpath(booted.path)
    st = read_state(sysroot, booted)
    out = []
    for d in deps:
        info = commit_info(sysroot.repo, d.checksum)
        base_checksum = base_commit_of(sysroot.repo, d.checksum)
        image = _image(sysroot, d.origin, base_checksum)
        od = sysroot.ostree_deployment(d)
        out.append(DeploymentStatus(
            deployment=d,
            base_checksum=base_checksum,
            version=image.version or info.version,
            layered=layered_packages(sysroot, d.checksum, dbpath),
            pending=staged is None and pending is not None and d.name == pending.name,
            superseded=staged is not None and pending is not None and d.name == pending.name,
            rollback=rollback is not None and d.name == rollback.name,
            commit=info,
            base=commit_info(sysroot.repo, base_checksum) if base_checksum != d.checksum else info,
            pinned=bool(od.is_pinned()),
            unlocked=_unlocked(od, live=d.booted and st.live),
            remote=_remote_status(sysroot, d.origin, base_checksum),
            image_digest=image.digest,
            live_etc=added_files(sysroot, d),
        ))
    staged_status = None
    if staged is not None:
        origin = Origin.from_data(staged.origin)
        base_checksum = base_commit_of(sysroot.repo, staged.commit)
        info = commit_info(sysroot.repo, staged.commit)
        staged_status = StagedStatus(
            staged, booted.osname, origin.refspec, base_checksum,
            layered_packages(sysroot, staged.commit, dbpath), being_written(sysroot),
            serial=_next_serial(deps, booted.osname, staged.commit),
            commit=info,
            base=commit_info(sysroot.repo, base_checksum) if base_checksum != staged.commit else info,
            remote=_remote_status(sysroot, origin, base_checksum),
            image_digest=_image(sysroot, origin, base_checksum).digest,
        )
    next_commit = staged.commit if staged is not None else pending.checksum if pending is not None else None
    diff = None
    if next_commit is not None:
        diff = PackageChanges.between(commit_packages(sysroot.repo, booted.checksum, dbpath),
                                      commit_packages(sysroot.repo, next_commit, dbpath))
    live = None
    if st.live:
        live_pkgs = commit_packages(sysroot.repo, st.commit, dbpath)
        # A package installed live only and since requested for the next boot stays after a reboot.
        next_boot = {p.name for p in commit_packages(sysroot.repo, next_commit or booted.checksum, dbpath)}
        transient = tuple(n for n in st.transient.packages if n not in next_boot) if st.transient else ()
        live = LiveStatus(st.commit, st.inprogress, st.replaced,
                          PackageChanges.between(commit_packages(sysroot.repo, booted.checksum, dbpath), live_pkgs),
                          transient)
    holder = lulayer_holder(sysroot)
    transaction = (holder[1], f"lulayer (pid {holder[0]})", "") if holder else None
    return Status(tuple(out), diff, live, staged_status, transaction)
