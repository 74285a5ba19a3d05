"""The transaction core: every command that changes a sysroot runs through here.

One sequence, whatever the caller (the CLI, its JSON output, the Ansible
module): take the sysroot lock; finish what a killed run left (a live update in
progress, a deployment staged and not written); run the operation (resolve and
compose, deploy or stage, apply live); hand a staged deployment to a detached
writer or write it; release the lock. Each operation returns a typed result;
how it is shown is the caller's business.

    with Transaction.begin(path, reporter) as tx:
        outcome = tx.install(["htop"], live=True)
        show(outcome)
    # here, with a detached writer, the process has left through os._exit
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lulayer import signals
from lulayer.apply import live
from lulayer.apply import state as live_state
from lulayer.apply.live import LivePlan, LiveResult, check_live, live_root, mount_ahead, take_back_ahead
from lulayer.apply.sysconf import link_clashes
from lulayer.errors import LiveApplyError, LiveRefusedError, LulayerError
from lulayer.layering import deploy, staged, vardirs
from lulayer.layering.layer import Layering, LayerResult
from lulayer.layering.resolver import Resolver, split_specs
from lulayer.lock import sysroot_lock
from lulayer.mounts import host_writer_namespace
from lulayer.progress import ProgressReport
from lulayer.rpmdb.db import commit_packages, tree_dbpath
from lulayer.rpmdb.model import PackageChanges
from lulayer.run import run
from lulayer.signals import Stage
from lulayer.sysroot import OSTREE_BOOTED, Deployment, Sysroot, require_root

if TYPE_CHECKING:  # imported by the commands that use them: not every command's start-up pays for them
    from lulayer.layering.cleanup import CleanupResult
    from lulayer.layering.resolver_worker import ResolverWorker
    from lulayer.layering.status import Status


class Reporter(Protocol):
    """Where the core reports as it goes: lines for a person, download progress, recoveries."""

    def say(self, message: str) -> None: ...

    def progress(self, report: ProgressReport) -> None: ...

    def recovered(self, recovery: Recovery) -> None: ...


@dataclass(frozen=True)
class Recovery:
    """What a command finished first, left by an earlier one that was killed."""

    live: LiveResult | None = None  # an interrupted live update, finished to its target
    staged: Deployment | None = None  # a deployment staged by --live, now written

    @property
    def empty(self) -> bool:
        return self.live is None and self.staged is None


class NextBoot(StrEnum):
    """What an operation did to the deployment that boots next."""

    UNCHANGED = "unchanged"  # nothing new: a dry run, or nothing to do
    WRITTEN = "written"  # a new deployment is written and boots next
    BEING_WRITTEN = "being-written"  # staged; a detached child writes it (a reboot waits for it)


@dataclass(frozen=True)
class LayerOutcome:
    """install, uninstall or upgrade: the package changes, what went live, the next boot."""

    layer: LayerResult
    live: LiveResult | None
    next_boot: NextBoot
    needs_reboot: bool = False  # the next boot brings what the running system lacks (Transaction.needs_reboot)
    live_refused: str | None = None  # with --live-or-reboot: why the change was not applied live

    @property
    def changed(self) -> bool:
        """Something changed: a new deployment for the next boot, or the live /usr (a dry run: would)."""
        return self.layer.changed or (self.live is not None and not self.live.noop)

    def to_json(self) -> dict[str, object]:
        """The outcome as `--json` prints it: the same data as the text output."""
        out = self.layer.to_json()
        out["changed"] = self.changed
        out["next-boot"] = str(self.next_boot)
        out["needs-reboot"] = self.needs_reboot
        if self.live is not None:
            out["live"] = self.live.to_json()
        if self.live_refused is not None:
            out["live-refused"] = self.live_refused
        return out


@dataclass(frozen=True)
class LiveOutcome:
    """apply-live (or its --reset): what changed live, and whether the next boot brings more."""

    live: LiveResult
    needs_reboot: bool

    def to_json(self) -> dict[str, object]:
        return {"changed": not self.live.noop, "needs-reboot": self.needs_reboot, "live": self.live.to_json()}


def status(sysroot_path: Path | None) -> Status:
    """The sysroot's deployments, live state and staged deployment; takes no lock."""
    from lulayer.layering.status import read_status

    return read_status(Sysroot(sysroot_path))


def needs_reboot(sysroot: Sysroot) -> bool:
    """Whether the deployment that boots next (staged, else the default) holds something the
    running system does not: it is neither the booted commit nor what the live /usr holds (or
    holds under the packages installed live only)."""
    record = staged.read(sysroot)
    next_commit = record.commit if record is not None else sysroot.deployments()[0].checksum
    booted = sysroot.booted()
    st = live_state.read_state(sysroot, booted)
    return next_commit not in (booted.checksum, st.commit, st.transient.base if st.transient else None)


TRANSIENT_NOTE = "Applied to the running system only (transient): the next boot is unchanged; a reboot drops it."


def check_transient(*, live: bool, dry_run: bool = False, latest: bool = False) -> None:
    """Refuse --transient where it means nothing: it applies to the running system only."""
    if not live:
        raise LulayerError("--transient applies a package to the running system only, which needs --live",
                           hint="pass --live --transient, or leave out --transient to install for the next boot")
    if dry_run or latest:
        raise LulayerError(f"--transient cannot be combined with {'--dry-run' if dry_run else '--latest'}",
                           hint="leave out one of them")


def check_reboot(sysroot_path: Path | None) -> None:
    """Refuse to reboot a folder sysroot: it is not the running host."""
    if sysroot_path is not None:
        raise LulayerError(f"--reboot reboots the running host, and {sysroot_path} is a folder sysroot",
                           hint="leave out -r/--reboot")


def reboot_host(sysroot_path: Path | None) -> None:
    """Reboot the running host (`systemctl reboot`), as rpm-ostree's --reboot does after a change."""
    check_reboot(sysroot_path)
    run(["systemctl", "reboot"])


def layered_requests(sysroot_path: Path | None) -> tuple[str, ...]:
    """The package requests the next operation builds on: a staged deployment's, else the merge
    deployment's origin. Reads only (no lock, no root): for shell completion."""
    sysroot = Sysroot(sysroot_path)
    record = staged.read(sysroot)
    return record.requested if record is not None else sysroot.merge_deployment().origin.requested


class Transaction:
    """One locked sysroot, from taking the lock to leaving it (see the module docstring)."""

    def __init__(self, sysroot: Sysroot, reporter: Reporter, resolver: Resolver | None = None) -> None:
        self.sysroot = sysroot
        self.reporter = reporter
        self.resolver = resolver  # None: each operation that resolves makes one (resolver.make_resolver)
        self._detach = False

    @classmethod
    @contextmanager
    def begin(cls, sysroot_path: Path | None, reporter: Reporter,
              worker: ResolverWorker | None = None) -> Iterator[Transaction]:
        """The sysroot, locked for the block (waiting for another holder, named).

        On a booted host the process first moves to a mount namespace of its own in which
        /sysroot and /boot are writable (mounts.host_writer_namespace): a read-only /sysroot
        stays read-only for every other process, before, during and after the command.

        worker: the command's resolver, started before its imports (resolver_worker); the
        transaction ends it when the block ends, before a detached writer is forked."""
        try:
            require_root()
            if sysroot_path is None and OSTREE_BOOTED.exists():
                host_writer_namespace()
            sysroot = Sysroot(sysroot_path)
            with sysroot_lock(sysroot, on_wait=reporter.say):
                tx = cls(sysroot, reporter, worker)
                try:
                    yield tx
                except BaseException:
                    # The caller failed before the writer was started: write it now. Not after a
                    # signal: the command stops as a SIGKILL would, and the next one writes it.
                    if tx._detach and signals.received() is None:
                        with suppress(LulayerError):
                            staged.finalize(sysroot)
                    raise
                if worker is not None:
                    worker.close()  # before _leave forks the detached writer
                tx._leave()
        finally:
            if worker is not None:
                worker.close()

    def _recover(self, *, live_update: bool = True, staged_deployment: bool = True) -> None:
        """Finish what a killed run left: its live update first (the booted deployment's
        live state), then the deployment it staged."""
        recovery = Recovery(
            live=live.finish_interrupted(self.sysroot, self.reporter.say) if live_update else None,
            staged=staged.finalize(self.sysroot) if staged_deployment else None,
        )
        if not recovery.empty:
            self.reporter.recovered(recovery)
        signals.reached(Stage.UNCHANGED)  # what this command itself changed: nothing yet
        signals.checkpoint()

    # --- layering ----------------------------------------------------------------------

    # live_or_reboot: with live, a change that cannot go live (check_live refuses it) is
    # deployed for the next boot instead of refused; the outcome says why (live_refused).

    def install(self, names: Sequence[str], *, dry_run: bool = False, idempotent: bool = False,
                allow_inactive: bool = False, latest: bool = False, live: bool = False,
                allow_replacement: bool = False, live_or_reboot: bool = False,
                transient: bool = False) -> LayerOutcome:
        if transient:
            check_transient(live=live, dry_run=dry_run, latest=latest)
            return self._install_transient(names, idempotent=idempotent)
        live = live or live_or_reboot
        return self._layer(lambda ly: ly.install(names, dry_run=dry_run, idempotent=idempotent,
                                                 allow_inactive=allow_inactive, latest=latest, stage=live),
                           live=live, allow_replacement=allow_replacement, allow_removal=False,
                           live_or_reboot=live_or_reboot, ahead=live)

    def uninstall(self, names: Sequence[str], *, remove_all: bool = False, idempotent: bool = False,
                  dry_run: bool = False, live: bool = False, allow_replacement: bool = False,
                  live_or_reboot: bool = False) -> LayerOutcome:
        live = live or live_or_reboot
        # Packages installed live only go from the running system; there is nothing to redeploy.
        names = split_specs(names)
        self._recover()  # what a killed run left may change what is live
        transient = self._transient()
        dropped = tuple(n for n in names if live and transient is not None and n in transient.packages
                        and not dry_run)
        if transient is not None and dropped and set(dropped) == set(names) and not remove_all:
            return self._uninstall_transient(transient, dropped)
        rest = tuple(n for n in names if n not in dropped)
        # Removing what is uninstalled is what uninstall --live is for.
        return self._layer(lambda ly: ly.uninstall(rest, remove_all=remove_all, idempotent=idempotent,
                                                   dry_run=dry_run, stage=live),
                           live=live, allow_replacement=allow_replacement, allow_removal=True, drop=dropped,
                           live_or_reboot=live_or_reboot)

    def override(self, *, remove: Sequence[str] = (), replace_from: tuple[str, Sequence[str]] | None = None,
                 replace_local: Sequence[str] = (), reset: Sequence[str] = (), reset_all: bool = False,
                 dry_run: bool = False, live: bool = False, allow_replacement: bool = False,
                 live_or_reboot: bool = False) -> LayerOutcome:
        """Remove or replace base packages, or reset their overrides (Layering.override)."""
        if live and (remove or replace_from or replace_local) and not allow_replacement and not dry_run:
            # Checked before anything is done: the files of a base package are in use.
            raise LiveApplyError("removing or replacing base packages live changes files the running system has",
                                 hint="pass --allow-replacement to apply it live, or leave out --live and reboot")
        live = live or live_or_reboot  # without --live, --live-or-reboot deploys what cannot go live
        return self._layer(lambda ly: ly.override(remove=remove, replace_from=replace_from,
                                                  replace_local=replace_local, reset=reset, reset_all=reset_all,
                                                  dry_run=dry_run, stage=live),
                           live=live, allow_replacement=allow_replacement, allow_removal=False,
                           live_or_reboot=live_or_reboot)

    def upgrade(self, *, dry_run: bool = False, live: bool = False,
                allow_replacement: bool = False, live_or_reboot: bool = False) -> LayerOutcome:
        live = live or live_or_reboot
        return self._layer(lambda ly: ly.upgrade(dry_run=dry_run, stage=live),
                           live=live, allow_replacement=allow_replacement, allow_removal=False,
                           live_or_reboot=live_or_reboot)

    def _layer(self, operation: Callable[[Layering], LayerResult], *, live: bool, allow_replacement: bool,
               allow_removal: bool, live_or_reboot: bool = False, drop: Sequence[str] = (),
               ahead: bool = False) -> LayerOutcome:
        outcome = self._layer_outcome(operation, live=live, allow_replacement=allow_replacement,
                                      allow_removal=allow_removal, live_or_reboot=live_or_reboot, drop=drop,
                                      ahead=ahead)
        if outcome.layer.dry_run:  # what the next boot would bring; a live apply would leave nothing pending
            pending = not live and (outcome.layer.changed or self.needs_reboot())
        else:
            pending = self.needs_reboot()
        return replace(outcome, needs_reboot=pending)

    def needs_reboot(self) -> bool:
        """Whether the next boot brings what the running system lacks (see needs_reboot)."""
        return needs_reboot(self.sysroot)

    def _layer_outcome(self, operation: Callable[[Layering], LayerResult], *, live: bool, allow_replacement: bool,
                       allow_removal: bool, live_or_reboot: bool, drop: Sequence[str] = (),
                       ahead: bool = False) -> LayerOutcome:
        """ahead: the packages may go live as soon as rpm has written them, before their commit
        (live.mount_ahead); the live update to the commit then records them."""
        self._recover()
        refused: list[LiveRefusedError] = []
        checked: dict[str, LivePlan] = {}  # what the gate passed, for the live update not to work it out again

        def live_gate(commit: str) -> bool:
            """Before the next boot's deployment is recorded: may commit go live? A refusal
            leaves nothing changed, or with live_or_reboot, the deployment written unstaged.
            With packages live only, what goes live is commit plus them, composed later: the
            live apply itself checks that one."""
            if self._transient() is not None:
                return True
            try:
                plan = check_live(self.sysroot, commit, allow_replacement=allow_replacement,
                                  allow_removal=allow_removal)
            except LiveRefusedError as e:
                if not live_or_reboot:
                    raise
                refused.append(e)
                return False
            if plan is not None:
                checked[commit] = plan
            return True

        # With live, the next boot's deployment is staged: written after the live update.
        try:
            result = operation(self._layering(live_gate=live_gate,
                                              ahead=partial(mount_ahead, self.sysroot) if ahead else None))
            signals.checkpoint()
        except BaseException:
            # What went live ahead has no live update to its commit to finish it: take it back. After a
            # signal the command stops as a SIGKILL would: the next command takes it back.
            if ahead and signals.received() is None:
                with suppress(LulayerError):
                    take_back_ahead(self.sysroot)
            raise
        if result.dry_run:
            return LayerOutcome(result, None, NextBoot.UNCHANGED)
        if refused:
            take_back_ahead(self.sysroot)
            return LayerOutcome(result, None, NextBoot.WRITTEN, live_refused=str(refused[0]))
        if not live:
            if result.deployment is not None:  # its /var links are made at the next boot: say what is in the way
                clashes = link_clashes(live_root(self.sysroot, self.sysroot.booted()),
                                       vardirs.read_links(result.deployment.path))
                result = replace(result, notes=(*result.notes, *clashes))
            return LayerOutcome(result, None, NextBoot.WRITTEN if result.deployment else NextBoot.UNCHANGED)
        # Nothing new (already requested): the pending deployment, if any, is what goes live.
        target = result.commit or self.sysroot.deployments()[0].checksum
        try:
            live_result = self._apply_live(target, allow_replacement=allow_replacement, allow_removal=allow_removal,
                                           drop=drop, checked=checked.get(target))
        except LiveRefusedError as e:
            # Nothing new was made (already requested): what is pending stays so.
            if not live_or_reboot:
                raise
            return LayerOutcome(result, None, NextBoot.UNCHANGED, live_refused=str(e))
        except BaseException:
            # A failed live apply (refusals came before staging) still leaves the next boot's deployment. Should
            # that fail too, it is recorded (status shows it): the live error is the one to report.
            # After a signal the command stops as a SIGKILL would: the next command writes it.
            if signals.received() is None:
                with suppress(LulayerError):
                    staged.finalize(self.sysroot)
            raise
        if result.staged is None:
            return LayerOutcome(result, live_result, NextBoot.UNCHANGED)
        signals.reached(Stage.LIVE_DONE_STAGED)
        return LayerOutcome(result, live_result, self._hand_off_staged())

    def _layering(self, live_gate: Callable[[str], bool] | None = None,
                  ahead: Callable[[Path, Path], object] | None = None) -> Layering:
        return Layering(self.sysroot, resolver=self.resolver, progress=self.reporter.progress, live_gate=live_gate,
                        ahead=ahead)

    def _hand_off_staged(self) -> NextBoot:
        """Leave the staged deployment to a detached writer when one can take it, else write it."""
        if staged.can_detach(self.sysroot):
            self._detach = True
            return NextBoot.BEING_WRITTEN
        staged.finalize(self.sysroot)
        return NextBoot.WRITTEN

    def _leave(self) -> None:
        if not self._detach:
            return
        staged.write_detached(self.sysroot)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # the detached child holds the lock now: leave without releasing it

    # --- live --------------------------------------------------------------------------

    def _transient(self) -> live_state.Transient | None:
        """The packages the running system has for now only (install --live --transient)."""
        return live_state.read_state(self.sysroot, self.sysroot.booted()).transient

    def _apply_live(self, target: str, *, allow_replacement: bool, allow_removal: bool = False,
                    drop: Sequence[str] = (), checked: LivePlan | None = None) -> LiveResult:
        """Make the live /usr target's. Packages installed live only stay live, on top of target,
        unless target has them (a persistent install made them the next boot's) or drop names them.
        checked: the live gate's plan for target (live.apply_live)."""
        transient = self._transient()
        keep: tuple[str, ...] = ()
        if transient is not None:
            have = {p.name for p in commit_packages(self.sysroot.repo, target, tree_dbpath(self.sysroot.booted().path))}
            keep = tuple(n for n in transient.packages if n not in drop and n not in have)
        kept = None
        if keep:
            on = target
            target, _ = self._layering().live_only(on, keep)
            kept = live_state.Transient(on, keep)
        return live.apply_live(self.sysroot, target, allow_replacement=allow_replacement,
                               allow_removal=allow_removal or bool(drop), progress=self.reporter.progress,
                               transient=kept, checked=checked)

    def _install_transient(self, names: Sequence[str], *, idempotent: bool) -> LayerOutcome:
        """install --live --transient: names onto what the live /usr holds, for the running system
        only; the next boot and the origin stay as they are (rpm-ostree issues 3993 and 4778 ask
        for it; dnf5's --transient and bootc's usr-overlay do it by hand, unrecorded)."""
        names = split_specs(names)
        if not names:
            raise LulayerError("no package named", hint="lulayer install --live --transient PKG...")
        self._recover()
        booted = self.sysroot.booted()
        st = live_state.read_state(self.sysroot, booted)
        requested = self.sysroot.merge_deployment().origin.requested
        old = st.transient.packages if st.transient is not None else ()
        already = [n for n in names if n in old or n in requested]
        if already and not idempotent:
            raise LulayerError(f"already requested: {', '.join(already)}",
                               hint="pass --idempotent to make this a no-op")
        new = tuple(n for n in names if n not in already)
        nothing = LayerResult(PackageChanges(), requested, previous=requested)
        if not new:
            return LayerOutcome(replace(nothing, message=f"already requested: {', '.join(already)}; nothing to do"),
                                None, NextBoot.UNCHANGED, needs_reboot=self.needs_reboot())
        base = st.transient.base if st.transient is not None else st.commit
        target, _ = self._layering().live_only(st.commit, new)
        result = live.apply_live(self.sysroot, target, progress=self.reporter.progress,
                                 transient=live_state.Transient(base, (*old, *new)))
        return LayerOutcome(replace(nothing, message=TRANSIENT_NOTE), result, NextBoot.UNCHANGED,
                            needs_reboot=self.needs_reboot())

    def _uninstall_transient(self, transient: live_state.Transient, names: Sequence[str]) -> LayerOutcome:
        """uninstall --live of packages installed live only: the live /usr goes back to what it
        held without them; no deployment changes."""
        requested = self.sysroot.merge_deployment().origin.requested
        result = self._apply_live(transient.base, allow_replacement=False, drop=names)
        return LayerOutcome(LayerResult(PackageChanges(), requested, previous=requested,
                                        message="Removed from the running system only; the next boot is unchanged."),
                            result, NextBoot.UNCHANGED, needs_reboot=self.needs_reboot())

    def apply_live(self, *, allow_replacement: bool = False) -> LiveOutcome:
        """Apply the pending deployment to the running system."""
        self._recover()
        pending = self.sysroot.pending()
        if pending is None:
            raise LiveApplyError("there is no pending deployment to apply",
                                 hint="make one with `lulayer install PKG`, or pass --reset")
        result = self._apply_live(pending.checksum, allow_replacement=allow_replacement)
        return LiveOutcome(result, self.needs_reboot())

    def reset_live(self) -> LiveOutcome:
        """Return the live /usr to the booted commit (an interrupted update is dropped, not finished)."""
        self._recover(live_update=False)
        result = live.reset(self.sysroot)
        return LiveOutcome(result, self.needs_reboot())

    # --- deployments -------------------------------------------------------------------

    def finalize(self) -> Deployment | None:
        """Write a deployment staged by --live now; None when none is recorded."""
        self._recover(staged_deployment=False)
        return staged.finalize(self.sysroot)

    def rollback(self) -> Deployment:
        """Make the previous deployment the default for the next boot; returns it."""
        self._recover()
        return deploy.rollback(self.sysroot)

    def cleanup(self, *, pending: bool = False, rollback: bool = False, repomd: bool = False) -> CleanupResult:
        # A staged deployment that --pending drops is not written first.
        self._recover(staged_deployment=not pending)
        from lulayer.layering.cleanup import cleanup

        return cleanup(self.sysroot, pending=pending, rollback=rollback, repomd=repomd)
