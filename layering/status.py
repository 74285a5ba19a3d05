"""What `lulayer status` reports, as values; the CLI only formats them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from lulayer.apply.state import read_state
from lulayer.layering.layer import ImageState, base_commit_of, layered_packages
from lulayer.layering.staged import StagedDeployment, being_written
from lulayer.layering.staged import read as read_staged
from lulayer.rpmdb.db import commit_packages, tree_dbpath
from lulayer.rpmdb.model import Package, PackageChanges
from lulayer.sysroot import Deployment, Origin, RefspecKind, Sysroot, commit_metadata


@dataclass(frozen=True)
class DeploymentStatus:
    deployment: Deployment
    base_checksum: str
    version: str | None
    layered: tuple[Package, ...]
    pending: bool
    rollback: bool
    superseded: bool = False  # boots next only until the staged deployment is written, which drops it
    image_digest: str | None = None  # a container deployment's image, from its base commit's metadata

    def to_json(self) -> dict[str, object]:
        d = self.deployment
        layered = self.base_checksum != d.checksum
        out: dict[str, object] = {
            "id": d.id,
            "osname": d.osname,
            "serial": d.serial,
            "checksum": d.checksum,
            "base-checksum": self.base_checksum if layered else None,
            "version": self.version,
            "origin": d.origin.refspec,
            "booted": d.booted,
            "staged": d.staged,
            "pending": self.pending,
            "rollback": self.rollback,
            "requested-packages": list(d.origin.requested),
            "packages": [p.nevra for p in self.layered],
            "lulayer-superseded": self.superseded,
        }
        # rpm-ostree's keys for an image-based deployment, left out when unknown
        # (src/daemon/rpmostreed-deployment-utils.cxx rpmostreed_deployment_generate_variant).
        if d.origin.kind is RefspecKind.CONTAINER:
            out["container-image-reference"] = d.origin.refspec
            if self.image_digest is not None:
                out["container-image-reference-digest"] = self.image_digest
        return out


@dataclass(frozen=True)
class LiveStatus:
    commit: str  # what the live /usr holds
    inprogress: str | None  # an interrupted update's target
    replaced: bool
    diff: PackageChanges  # live packages against the booted commit's


@dataclass(frozen=True)
class StagedStatus:
    """A deployment recorded for the next boot and not yet written (layering/staged.py)."""

    staged: StagedDeployment
    osname: str
    refspec: str
    base_checksum: str
    layered: tuple[Package, ...]
    being_written: bool  # a detached lulayer child is writing it now
    image_digest: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "osname": self.osname,
            "checksum": self.staged.commit,
            "base-checksum": self.base_checksum if self.base_checksum != self.staged.commit else None,
            "origin": self.refspec,
            "booted": False,
            "staged": True,
            "pending": True,
            "requested-packages": list(self.staged.requested),
            "packages": [p.nevra for p in self.layered],
            "builds-on": self.staged.merge,
            "being-written": self.being_written,
            "error": self.staged.error,
        }


@dataclass(frozen=True)
class Status:
    deployments: tuple[DeploymentStatus, ...]
    pending_diff: PackageChanges | None  # the pending (or staged) deployment against the booted one
    live: LiveStatus | None = None
    staged: StagedStatus | None = None

    def to_json(self) -> dict[str, object]:
        deps = [d.to_json() for d in self.deployments]
        for d in deps:
            if d["booted"]:
                d["live-inprogress"] = self.live.inprogress if self.live else None
                d["live-replaced"] = self.live.commit if self.live and self.live.replaced else None
                d["live-commit"] = self.live.commit if self.live else None
        # Not in "deployments": it has no folder, serial or id yet.
        return {"deployments": deps, "lulayer-staged": self.staged.to_json() if self.staged else None}


def read_status(sysroot: Sysroot) -> Status:
    deps = sysroot.deployments()
    booted = sysroot.booted()
    pending = sysroot.pending()
    rollback = sysroot.rollback()
    staged = read_staged(sysroot)
    if staged is not None and pending is not None and pending.checksum == staged.commit:
        staged = None  # written; its record is about to go
    dbpath: PurePosixPath = tree_dbpath(booted.path)
    out = []
    for d in deps:
        meta = commit_metadata(sysroot.repo, d.checksum)
        version = meta.get("version")
        base = base_commit_of(sysroot.repo, d.checksum)
        image = ImageState.of(sysroot.repo, base) if d.origin.kind is RefspecKind.CONTAINER else ImageState()
        out.append(DeploymentStatus(
            deployment=d,
            base_checksum=base,
            version=image.version or (version if isinstance(version, str) else None),
            layered=layered_packages(sysroot, d.checksum, dbpath),
            pending=staged is None and pending is not None and d.name == pending.name,
            superseded=staged is not None and pending is not None and d.name == pending.name,
            rollback=rollback is not None and d.name == rollback.name,
            image_digest=image.digest,
        ))
    staged_status = None
    if staged is not None:
        origin = Origin.from_data(staged.origin)
        base = base_commit_of(sysroot.repo, staged.commit)
        image = ImageState.of(sysroot.repo, base) if origin.kind is RefspecKind.CONTAINER else ImageState()
        staged_status = StagedStatus(staged, booted.osname, origin.refspec, base,
                                     layered_packages(sysroot, staged.commit, dbpath), being_written(sysroot),
                                     image.digest)
    next_commit = staged.commit if staged is not None else pending.checksum if pending is not None else None
    diff = None
    if next_commit is not None:
        diff = PackageChanges.between(commit_packages(sysroot.repo, booted.checksum, dbpath),
                                      commit_packages(sysroot.repo, next_commit, dbpath))
    st = read_state(sysroot, booted)
    live = None
    if st.live:
        live_pkgs = commit_packages(sysroot.repo, st.commit, dbpath)
        live = LiveStatus(st.commit, st.inprogress, st.replaced,
                          PackageChanges.between(commit_packages(sysroot.repo, booted.checksum, dbpath), live_pkgs))
    return Status(tuple(out), diff, live, staged_status)
