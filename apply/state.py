"""The live state of the booted deployment: what the live /usr is, and what is under way.

It lives where it survives the process but not a reboot, beside rpm-ostree's
own stamp: ``run/ostree/deployment-state/CHECKSUM.SERIAL/``. The commits it
names are also held by refs (``lulayer/live-commit/COMMIT``), so a repository
prune never removes them while they are live; refs left from an earlier boot
are ignored and dropped. The refs of a new state are written before its file
and the others dropped after it, so a kill between the two keeps more, never
less: a commit the file names is always held.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from dataclasses import dataclass, replace

from gi.repository import GLib, OSTree

from lulayer.errors import LiveApplyError
from lulayer.fsutil import fsync_dir, opened_dir, remove_stale_temps, write_record
from lulayer.sysroot import Deployment, Sysroot

STATE_FILE = "lulayer-live.json"
# rpm-ostree's marker that the deployment has live changes (its status reads it).
STAMP = "rpmostree-is-live.stamp"
REF_PREFIX = "lulayer/live-commit"
# The refs of earlier versions, one per role: a kill between the file and them could leave a named commit unheld.
LEGACY_REFS = ("lulayer/live-apply", "lulayer/live-apply-inprogress")


@dataclass(frozen=True)
class Transient:
    """Packages applied to the running system only (`install --live --transient`): the live
    commit is `base` (the next boot's commit, or the booted one) plus these requests, a commit
    that is never deployed. The record goes with the rest of the live state at reboot."""

    base: str
    packages: tuple[str, ...]


@dataclass(frozen=True)
class LiveState:
    booted: str  # the booted commit
    commit: str  # what the live /usr holds now (the booted commit when nothing is live)
    inprogress: str | None = None  # the target of an update that has not finished
    replaced: bool = False  # files were changed or removed, not only added
    transient: Transient | None = None  # what the live commit (or the target in progress) holds for now only
    # A compose's new files are live ahead of their commit (live.mount_ahead): the install that made
    # them goes on to its commit and finishes the update to it; killed before that, they are taken back.
    ahead: bool = False

    @property
    def live(self) -> bool:
        return self.commit != self.booted or self.inprogress is not None or self.ahead

    def to_json(self) -> dict[str, object]:
        transient = None if self.transient is None else {"base": self.transient.base,
                                                         "packages": list(self.transient.packages)}
        return {"commit": self.commit, "inprogress": self.inprogress, "replaced": self.replaced,
                "transient": transient, "ahead": self.ahead}


def _held(state: LiveState) -> set[str]:
    """The commits state names besides the booted one: those a prune must keep."""
    named = (state.commit, state.inprogress, state.transient.base if state.transient else None)
    return {c for c in named if c and c != state.booted}


def _hold_only(repo: OSTree.Repo, commits: set[str], *, drop_others: bool) -> None:
    """Hold commits by refs; with drop_others, release every other commit held here."""
    try:
        for c in sorted(commits):
            repo.set_ref_immediate(None, f"{REF_PREFIX}/{c}", c, None)
        if drop_others:
            _, refs = repo.list_refs(REF_PREFIX, None)
            for ref, c in refs.items():
                if c not in commits:
                    full = ref if ref.startswith(f"{REF_PREFIX}/") else f"{REF_PREFIX}/{ref}"
                    repo.set_ref_immediate(None, full, None, None)
            _, legacy = repo.list_refs(None, None)
            for ref in LEGACY_REFS:
                if ref in legacy:
                    repo.set_ref_immediate(None, ref, None, None)
    except GLib.Error as e:
        raise LiveApplyError(f"cannot write the refs under {REF_PREFIX}: {e.message}") from e


def read_state(sysroot: Sysroot, booted: Deployment) -> LiveState:
    path = sysroot.deployment_state_dir(booted) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return LiveState(booted=booted.checksum, commit=booted.checksum)
    except (OSError, ValueError) as e:
        raise LiveApplyError(f"{path} is unreadable: {e}",
                             hint="run `lulayer apply-live --reset` to return to the booted commit") from e
    transient = data.get("transient")
    return LiveState(
        booted=booted.checksum,
        commit=str(data.get("commit") or booted.checksum),
        inprogress=data.get("inprogress") or None,
        replaced=bool(data.get("replaced")),
        transient=Transient(str(transient["base"]), tuple(transient["packages"])) if transient else None,
        ahead=bool(data.get("ahead")),
    )


def write_state(sysroot: Sysroot, booted: Deployment, state: LiveState) -> None:
    """Record state durably: refs for its commits, the file, then the release of other commits."""
    _hold_only(sysroot.repo, _held(state), drop_others=False)
    d = sysroot.deployment_state_dir(booted)
    d.mkdir(parents=True, exist_ok=True)
    with opened_dir(d) as fd:
        if not os.path.exists(d / STAMP):
            write_record(fd, STAMP, b"")
        write_record(fd, STATE_FILE, (json.dumps(state.to_json()) + "\n").encode())
    fsync_dir(d.parent)
    _hold_only(sysroot.repo, _held(state), drop_others=True)


def clear_state(sysroot: Sysroot, booted: Deployment) -> None:
    d = sysroot.deployment_state_dir(booted)
    for name in (STATE_FILE, STAMP):
        with suppress(FileNotFoundError):
            os.unlink(d / name)
    _hold_only(sysroot.repo, set(), drop_others=True)


def drop_stale_temps(sysroot: Sysroot, booted: Deployment) -> None:
    """What a write of the state killed half-way left (the caller holds the lock)."""
    d = sysroot.deployment_state_dir(booted)
    if d.is_dir():
        with opened_dir(d) as fd:
            for name in (STATE_FILE, STAMP):
                remove_stale_temps(fd, name)


def drop_stale_refs(sysroot: Sysroot, booted: Deployment) -> None:
    """Refs from a live update of an earlier boot keep commits nobody uses."""
    if not (sysroot.deployment_state_dir(booted) / STATE_FILE).exists():
        _, refs = sysroot.repo.list_refs("lulayer", None)
        if refs:
            clear_state(sysroot, booted)


def begin(state: LiveState, target: str, transient: Transient | None = None) -> LiveState:
    """An update toward target under way; transient: what target holds for now only (recorded
    with it, so that an interrupted update is finished with it)."""
    return replace(state, inprogress=target, transient=transient)


def finish(state: LiveState, target: str, replaced: bool, transient: Transient | None = None) -> LiveState:
    return LiveState(booted=state.booted, commit=target, inprogress=None,
                     replaced=state.replaced or replaced, transient=transient)
