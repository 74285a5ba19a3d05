"""The command line: parse, call the core, print. The only module that imports click."""

from __future__ import annotations

import gc
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from lulayer import __version__, signals
from lulayer.errors import Interrupted, LulayerError
from lulayer.progress import ProgressReport

if TYPE_CHECKING:  # the core is imported when a command runs, not for --help
    from lulayer.apply.live import LiveResult
    from lulayer.layering.layer import LayerResult
    from lulayer.layering.status import CommitInfo, LiveStatus, StagedStatus, Status
    from lulayer.layering.transaction import LayerOutcome, Recovery, Transaction
    from lulayer.rpmdb.model import PackageChanges

# rpm-ostree's exit code for "nothing changed" (--unchanged-exit-77, upgrade --check) and for
# "a deployment is pending" (status --pending-exit-77): src/app/rpmostree-builtin-types.h,
# RPM_OSTREE_EXIT_UNCHANGED and RPM_OSTREE_EXIT_PENDING.
EXIT_UNCHANGED = 77
EXIT_PENDING = 77


@dataclass
class Context:
    sysroot_path: Path | None
    debug: bool


def _die(e: LulayerError) -> NoReturn:
    if isinstance(e, Interrupted):
        line = f"interrupted: {e.message}"
    else:
        line = f"error: {e.message}" + (f"; {e.hint}" if e.hint else "")
    click.echo(line, err=True)
    sys.exit(e.exit_code)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _progress_counts(r: ProgressReport) -> str:
    size = _size(r.done_bytes) + (f"/{_size(r.total_bytes)}" if r.total_bytes else "")
    return f"{r.done}/{r.total}, {size}"


class _TerminalReporter:
    """The core's reports (transaction.Reporter), on stderr: a progress bar on a terminal,
    plain lines without control characters elsewhere."""

    BAR = 24
    REDRAW = 0.1  # seconds between redraws of a progress line

    def __init__(self, json_mode: bool = False) -> None:
        self._tty = sys.stderr.isatty()
        self._json = json_mode  # stdout carries the JSON result alone
        self._drawn = 0.0

    def say(self, message: str) -> None:
        click.echo(message, err=True)

    def progress(self, report: ProgressReport) -> None:
        if not report.total:
            return
        if not self._tty:
            if report.finished:  # one line per finished step, for logs
                click.echo(f"{report.task}: {_progress_counts(report)}", err=True)
            return
        now = time.monotonic()
        if not report.finished and now - self._drawn < self.REDRAW:
            return
        self._drawn = now
        filled = self.BAR * min(report.done_bytes, report.total_bytes) // report.total_bytes if report.total_bytes \
            else self.BAR * report.done // report.total
        bar = "#" * filled + "-" * (self.BAR - filled)
        line = f"{report.task} [{bar}] {_progress_counts(report)}"
        if not report.finished and report.item:
            line += f" {report.item}"
        width = max(20, shutil.get_terminal_size().columns - 1)
        sys.stderr.write("\r\x1b[K" + line[:width] + ("\n" if report.finished else ""))
        sys.stderr.flush()

    def recovered(self, recovery: Recovery) -> None:
        if recovery.live is not None:
            if self._json:
                self.say(f"Finished an interrupted live update to {recovery.live.target[:12]}")
            else:
                _print_live(recovery.live)
        if recovery.staged is not None:
            self.say(f"Wrote the deployment staged for the next boot: {recovery.staged.name}")


def _transaction(ctx: Context, json_mode: bool = False, resolving: bool = False) -> AbstractContextManager[Transaction]:
    """The command's transaction. resolving: the command resolves packages, and its resolver's
    helper starts first, so that the backend's imports overlap the transaction core's below."""
    worker = None
    if resolving:
        from lulayer.layering.resolver_worker import ResolverWorker

        worker = ResolverWorker.start()
    from lulayer.layering.transaction import Transaction

    return Transaction.begin(ctx.sysroot_path, _TerminalReporter(json_mode), worker)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SystemExit, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            # After INT, TERM or HUP any failure is the signal's doing (a helper it killed,
            # a call it cut short): report the signal, as the state it left.
            stop = signals.interrupted()
            debug = ctx.obj is not None and ctx.obj.debug
            if stop is not None and not debug:
                _die(stop if not isinstance(e, Interrupted) else e)
            if not isinstance(e, LulayerError) or debug:
                raise
            _die(e)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lulayer")
@click.option("--sysroot", type=click.Path(path_type=Path, file_okay=False),
              help="Work on the OSTree folder sysroot DIR instead of the running system.", metavar="DIR")
@click.option("--debug", is_flag=True, help="Log every step; show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, sysroot: Path | None, debug: bool) -> None:
    """Layer RPM packages onto an OSTree-based system, for the next boot or live."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(name)s: %(message)s")
    ctx.obj = Context(sysroot_path=sysroot, debug=debug)


def _print_changes(result: LayerResult, where: str) -> None:
    ch = result.changes
    for p in ch.added:
        click.echo(f"  Added: {p.nevra}")
    for old, new in ch.upgraded:
        click.echo(f"  Upgraded: {old.nevra} -> {new.nevra}")
    for p in ch.removed:
        click.echo(f"  Removed: {p.nevra}")
    for note in result.notes:
        click.echo(note)
    if result.message:
        click.echo(result.message)
    elif result.dry_run:
        click.echo(f"Dry run: nothing was changed; these changes would go to the {where}.")
    elif ch.empty:
        click.echo(f"No package changes; a new deployment was made for the {where}.")
    else:
        click.echo(f"Changes queued for the {where}.")
    if result.inactive:
        click.echo("Inactive requests (the base image provides them): " + " ".join(result.inactive))


def _print_live(r: LiveResult) -> None:
    if r.noop:
        click.echo("Live: nothing to apply; the live /usr already is the target.")
        return
    for p in r.changes.added:
        click.echo(f"  Live added: {p.nevra}")
    for old, new in r.changes.upgraded:
        click.echo(f"  Live replaced: {old.nevra} -> {new.nevra}")
    for p in r.changes.removed:
        click.echo(f"  Live removed: {p.nevra}")
    click.echo(f"Live update applied: {r.added} files added, {r.changed} replaced, {r.removed} removed; "
               f"rpmdb {r.rpmdb}.")
    for path in r.etc_added:
        click.echo(f"  Added config: {path}")
    for note in r.notes:
        click.echo(f"  Note: {note}")
    for made in r.users:
        click.echo(f"  Created: {made}")
    for warning in r.warnings:
        click.echo(f"warning: {warning}", err=True)
    if r.units:
        click.echo("Units changed (restart the services that use them): " + " ".join(r.units))


def _print_outcome(outcome: LayerOutcome) -> None:
    from lulayer.layering.transaction import NextBoot

    _print_changes(outcome.layer, "next boot")
    if outcome.live_refused is not None:
        click.echo(f"Not applied live (--live-or-reboot): {outcome.live_refused}")
    if outcome.live is not None:
        _print_live(outcome.live)
    if outcome.next_boot is NextBoot.BEING_WRITTEN:
        click.echo("The next boot's deployment is being written in the background; a reboot waits for it.")
    if outcome.needs_reboot and not outcome.layer.dry_run:  # also when pending from before (community.general#10009)
        click.echo("The next boot brings changes the running system lacks: run `systemctl reboot` to use them.")


def _live_options(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option("--live-or-reboot", is_flag=True,
                     help="Apply the change live when it can be; otherwise make it for the next boot only "
                          "(without it, --live refuses such a change and changes nothing).")(f)
    f = click.option("--allow-replacement", is_flag=True,
                     help="With --live: allow replacing or removing existing files and packages.")(f)
    return click.option("-A", "--live", "--apply-live", "live", is_flag=True,
                        help="Also apply the change to the running system, without a reboot.")(f)


def _script_options(f: Callable[..., None]) -> Callable[..., None]:
    """The options of rpm-ostree's package commands that scripts and tools pass
    (src/app/rpmostree-pkg-builtins.cxx, rpmostree-builtin-upgrade.cxx)."""
    f = click.option("--json", "as_json", is_flag=True,
                     help="Print the result as JSON (the same data as the text), nothing else on stdout.")(f)
    f = click.option("--unchanged-exit-77", "unchanged_exit_77", is_flag=True,
                     help="Exit 77 when nothing changed (with --dry-run: when nothing would).")(f)
    f = click.option("-r", "--reboot", is_flag=True,
                     help="Reboot the host after a change (`systemctl reboot`); not with --live.")(f)
    return click.option("-y", "--assumeyes", is_flag=True,
                        help="Accepted for rpm-ostree's scripts; lulayer never asks.")(f)


def _check_reboot(ctx: Context, reboot: bool, live: bool) -> None:
    """Refuse -r/--reboot before anything is done where it cannot be honoured."""
    if not reboot:
        return
    if live:  # rpm-ostree refuses the pair too (rpmostreed-transaction-types.cxx)
        raise LulayerError("--reboot and --live cannot be combined",
                           hint="--live applies the change now; leave out one of them")
    from lulayer.layering.transaction import check_reboot

    check_reboot(ctx.sysroot_path)


def _report_outcome(outcome: LayerOutcome, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(outcome.to_json(), indent=2))
    else:
        _print_outcome(outcome)


def _after(ctx: Context, outcome: LayerOutcome, *, reboot: bool, unchanged_exit_77: bool) -> None:
    """What follows a printed outcome: a reboot after a change, or exit 77 after none."""
    if reboot and outcome.layer.changed and not outcome.layer.dry_run:
        from lulayer.layering.transaction import reboot_host

        reboot_host(ctx.sysroot_path)
    elif unchanged_exit_77 and not outcome.changed:
        sys.exit(EXIT_UNCHANGED)


@cli.command()
@click.argument("packages", nargs=-1, required=True)
@click.option("-n", "--dry-run", is_flag=True, help="Resolve and show the changes; change nothing.")
@click.option("--idempotent", is_flag=True, help="Do nothing when a package is already requested.")
@click.option("--allow-inactive", is_flag=True,
              help="Record a request for a package the base image already has (inactive until the base drops it).")
@click.option("--latest", is_flag=True,
              help="Also upgrade the named packages that are layered already to their newest versions "
                   "(the base image and other packages stay as they are).")
@click.option("--transient", is_flag=True,
              help="With --live: apply to the running system only; the next boot is unchanged, a reboot drops it.")
@_live_options
@_script_options
@click.pass_obj
def install(ctx: Context, packages: tuple[str, ...], dry_run: bool, idempotent: bool, allow_inactive: bool,
            latest: bool, transient: bool, live: bool, allow_replacement: bool, live_or_reboot: bool,
            as_json: bool, unchanged_exit_77: bool, reboot: bool, assumeyes: bool) -> None:
    """Layer PACKAGES onto the image, for the next boot (and now, with --live)."""
    if transient:  # refused before the lock is taken
        from lulayer.layering.transaction import check_transient

        check_transient(live=live, dry_run=dry_run, latest=latest)
    _check_reboot(ctx, reboot, live or live_or_reboot)
    with _transaction(ctx, as_json, resolving=True) as tx:
        outcome = tx.install(packages, dry_run=dry_run, idempotent=idempotent, allow_inactive=allow_inactive,
                             latest=latest, live=live, allow_replacement=allow_replacement,
                             live_or_reboot=live_or_reboot, transient=transient)
        _report_outcome(outcome, as_json)
    _after(ctx, outcome, reboot=reboot, unchanged_exit_77=unchanged_exit_77)


def _complete_layered(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Layered package names for `uninstall`, read from the origin without the lock or root."""
    from lulayer.layering.transaction import layered_requests

    sysroot = ctx.find_root().params.get("sysroot")
    try:
        names = layered_requests(sysroot)
    except Exception:  # completion must never print a traceback into the shell
        return []
    taken = set(ctx.params.get("packages") or ())
    return [n for n in names if n.startswith(incomplete) and n not in taken]


@cli.command()
@click.argument("packages", nargs=-1, shell_complete=_complete_layered)
@click.option("-a", "--all", "remove_all", is_flag=True, help="Remove every layered package.")
@click.option("--idempotent", is_flag=True, help="Skip packages that are not layered instead of refusing.")
@click.option("-n", "--dry-run", is_flag=True, help="Show the changes; change nothing.")
@_live_options
@_script_options
@click.pass_obj
def uninstall(ctx: Context, packages: tuple[str, ...], remove_all: bool, idempotent: bool, dry_run: bool, live: bool,
              allow_replacement: bool, live_or_reboot: bool, as_json: bool, unchanged_exit_77: bool, reboot: bool,
              assumeyes: bool) -> None:
    """Remove layered PACKAGES (--all: every layered package)."""
    if not packages and not remove_all:  # an empty list in a script must not remove everything
        raise LulayerError("no package named",
                           hint="name the packages to uninstall, or pass --all to remove every layered package")
    _check_reboot(ctx, reboot, live or live_or_reboot)
    with _transaction(ctx, as_json, resolving=True) as tx:
        outcome = tx.uninstall(packages, remove_all=remove_all, idempotent=idempotent, dry_run=dry_run, live=live,
                               allow_replacement=allow_replacement, live_or_reboot=live_or_reboot)
        _report_outcome(outcome, as_json)
    _after(ctx, outcome, reboot=reboot, unchanged_exit_77=unchanged_exit_77)


@cli.group()
def override() -> None:
    """Remove or replace packages of the base image, or undo that (rpm-ostree's `override`)."""


def _override_source(source: str | None) -> str:
    """The repository of --from repo=NAME, the one kind of source rpm-ostree knows
    (rust/src/daemon.rs parse_override_source)."""
    if source is None:
        raise LulayerError("override replace needs the repository the packages come from",
                           hint="pass --from repo=NAME (a repository enabled in /etc/yum.repos.d)")
    kind, _, name = source.partition("=")
    if kind != "repo" or not name:
        raise LulayerError(f"invalid override source {source!r}", hint="write it as --from repo=NAME")
    return name


def _override_command(ctx: Context, *, live: bool, allow_replacement: bool, live_or_reboot: bool, dry_run: bool,
                      as_json: bool, unchanged_exit_77: bool, reboot: bool, **change: Any) -> None:
    _check_reboot(ctx, reboot, live or live_or_reboot)
    with _transaction(ctx, as_json, resolving=True) as tx:
        outcome = tx.override(dry_run=dry_run, live=live, allow_replacement=allow_replacement,
                              live_or_reboot=live_or_reboot, **change)
        _report_outcome(outcome, as_json)
        if outcome.layer.changed and not dry_run and not as_json and any(
                change.get(k) for k in ("remove", "replace_from", "replace_local")):
            click.echo('Use "lulayer override reset" to undo overrides')  # as rpm-ostree says it
    _after(ctx, outcome, reboot=reboot, unchanged_exit_77=unchanged_exit_77)


@override.command("remove")
@click.argument("packages", nargs=-1, required=True)
@click.option("-n", "--dry-run", is_flag=True, help="Show the changes; change nothing.")
@_live_options
@_script_options
@click.pass_obj
def override_remove(ctx: Context, packages: tuple[str, ...], dry_run: bool, live: bool, allow_replacement: bool,
                    live_or_reboot: bool, as_json: bool, unchanged_exit_77: bool, reboot: bool,
                    assumeyes: bool) -> None:
    """Remove PACKAGES of the base image, files and rpmdb entries (--live needs --allow-replacement)."""
    _override_command(ctx, live=live, allow_replacement=allow_replacement, live_or_reboot=live_or_reboot,
                      dry_run=dry_run, as_json=as_json,
                      unchanged_exit_77=unchanged_exit_77, reboot=reboot, remove=packages)


@override.command("replace")
@click.argument("packages", nargs=-1, required=True)
@click.option("--from", "source", metavar="repo=NAME", help="The enabled repository the new packages come from.")
@click.option("-n", "--dry-run", is_flag=True, help="Show the changes; change nothing.")
@_live_options
@_script_options
@click.pass_obj
def override_replace(ctx: Context, packages: tuple[str, ...], source: str | None, dry_run: bool, live: bool,
                     allow_replacement: bool, live_or_reboot: bool, as_json: bool, unchanged_exit_77: bool,
                     reboot: bool, assumeyes: bool) -> None:
    """Replace base PACKAGES with what the repository offers (--from repo=NAME; they follow it),
    or with local RPM files (./PKG.rpm: that build, kept in the OSTree repository)."""
    from lulayer.layering.localpkg import is_local_spec

    files = tuple(p for p in packages if is_local_spec(p))  # as rpm-ostree tells files from names
    names = tuple(p for p in packages if not is_local_spec(p))
    if files and source is not None and not names:
        raise LulayerError("--from names where packages come from; local RPM files come from themselves",
                           hint="leave out --from, or name the packages of the repository")
    _override_command(ctx, live=live, allow_replacement=allow_replacement, live_or_reboot=live_or_reboot,
                      dry_run=dry_run, as_json=as_json,
                      unchanged_exit_77=unchanged_exit_77, reboot=reboot, replace_local=files,
                      replace_from=(_override_source(source), names) if names else None)


@override.command("reset")
@click.argument("packages", nargs=-1)
@click.option("-a", "--all", "reset_all", is_flag=True, help="Reset every override.")
@click.option("-n", "--dry-run", is_flag=True, help="Show the changes; change nothing.")
@_live_options
@_script_options
@click.pass_obj
def override_reset(ctx: Context, packages: tuple[str, ...], reset_all: bool, dry_run: bool, live: bool,
                   allow_replacement: bool, live_or_reboot: bool, as_json: bool, unchanged_exit_77: bool,
                   reboot: bool, assumeyes: bool) -> None:
    """Undo the overrides of PACKAGES (--all: every override): the base's packages come back."""
    if bool(packages) == reset_all:  # as rpmostree-override-builtins.cxx
        raise LulayerError("Cannot specify PACKAGEs with --all" if packages else "no package named",
                           hint="name the packages whose overrides to reset, or pass --all")
    _override_command(ctx, live=live, allow_replacement=allow_replacement, live_or_reboot=live_or_reboot,
                      dry_run=dry_run, as_json=as_json,
                      unchanged_exit_77=unchanged_exit_77, reboot=reboot, reset=packages, reset_all=reset_all)


@cli.command()
@click.option("-n", "--dry-run", is_flag=True, help="Show the changes; change nothing.")
@click.option("--check", is_flag=True, help="Only say whether an upgrade is available (exit 77 when none).")
@click.option("--preview", is_flag=True, help="Only show the package changes of the upgrade (exit 77 when none).")
@_live_options
@_script_options
@click.pass_obj
def upgrade(ctx: Context, dry_run: bool, check: bool, preview: bool, live: bool, allow_replacement: bool,
            live_or_reboot: bool, as_json: bool, unchanged_exit_77: bool, reboot: bool, assumeyes: bool) -> None:
    """Newest base commit held for the origin (its ref, or its image), layered packages at their newest versions."""
    if reboot and (check or preview):  # as rpmostree-builtin-upgrade.cxx
        raise LulayerError("--reboot cannot be combined with --check or --preview")
    _check_reboot(ctx, reboot, live or live_or_reboot)
    only_look = check or preview
    with _transaction(ctx, as_json, resolving=True) as tx:
        outcome = tx.upgrade(dry_run=dry_run or only_look, live=live and not only_look,
                             allow_replacement=allow_replacement, live_or_reboot=live_or_reboot and not only_look)
        if as_json or not check:
            _report_outcome(outcome, as_json)
        elif outcome.changed:
            click.echo("Upgrade available.")
        else:
            click.echo("No upgrade available.")
    # --check and --preview imply --unchanged-exit-77 (rpmostree-builtin-upgrade.cxx).
    _after(ctx, outcome, reboot=reboot, unchanged_exit_77=unchanged_exit_77 or only_look)


@cli.command("apply-live")
@click.option("--reset", is_flag=True, help="Return the live /usr to the booted commit.")
@click.option("--allow-replacement", is_flag=True, help="Allow replacing or removing existing files and packages.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON, nothing else on stdout.")
@click.pass_obj
def apply_live(ctx: Context, reset: bool, allow_replacement: bool, as_json: bool) -> None:
    """Apply the pending deployment to the running system, without a reboot."""
    with _transaction(ctx, as_json) as tx:
        outcome = tx.reset_live() if reset else tx.apply_live(allow_replacement=allow_replacement)
        if as_json:
            click.echo(json.dumps(outcome.to_json(), indent=2))
        elif reset:
            click.echo(f"Live /usr reset to the booted commit {outcome.live.target[:12]}.")
        else:
            _print_live(outcome.live)


@cli.command()
@click.pass_obj
def finalize(ctx: Context) -> None:
    """Write a deployment staged by `--live` now (on a host, shutdown does it too)."""
    with _transaction(ctx) as tx:
        dep = tx.finalize()
    click.echo(f"Wrote the staged deployment {dep.name}." if dep else "No staged deployment to write.")


@cli.command()
@click.pass_obj
def rollback(ctx: Context) -> None:
    """Make the previous deployment the default for the next boot."""
    with _transaction(ctx) as tx:
        dep = tx.rollback()
    click.echo(f"Moving {dep.checksum[:12]}.{dep.serial} to be first deployment. Reboot to use it.")


@cli.command()
@click.option("-p", "--pending", is_flag=True, help="Remove the pending deployment.")
@click.option("-r", "--rollback", "rollback_", is_flag=True, help="Remove the rollback deployment.")
@click.option("-m", "--repomd", is_flag=True, help="Remove cached repository metadata and packages.")
@click.pass_obj
def cleanup(ctx: Context, pending: bool, rollback_: bool, repomd: bool) -> None:
    """Remove pending or rollback deployments, caches, and unreferenced objects."""
    if not (pending or rollback_ or repomd):
        raise click.UsageError("say what to clean: --pending, --rollback and/or --repomd")
    with _transaction(ctx) as tx:
        r = tx.cleanup(pending=pending, rollback=rollback_, repomd=repomd)
    if r.dropped_staged:
        click.echo(f"Dropped the staged deployment of {r.dropped_staged[:12]} (not yet written)")
    for name in r.removed_deployments:
        click.echo(f"Removed deployment {name}")
    if r.removed_cache:
        click.echo(f"Removed cached metadata and packages in {r.removed_cache}")
    for name in r.removed_base_checkouts:
        click.echo(f"Removed base checkout {name[:12]}")
    click.echo("Pruned unreferenced repository objects")
    click.echo(f"Freed {_size(r.freed)} (live layers {_size(r.freed_live)}, caches {_size(r.freed_cache)}, "
               f"repository {_size(r.freed_repo)})")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="rpm-ostree's JSON layout.")
@click.option("-v", "--verbose", is_flag=True, help="Show more of each deployment.")
@click.option("-b", "--booted", "booted_only", is_flag=True, help="Only the booted deployment.")
@click.option("--pending-exit-77", "pending_exit_77", is_flag=True,
              help="Exit 77 when a deployment other than the booted one boots next.")
@click.pass_obj
def status(ctx: Context, as_json: bool, verbose: bool, booted_only: bool, pending_exit_77: bool) -> None:
    """The deployments in boot order, the booted one marked."""
    from lulayer.layering.transaction import status as read_status

    st = read_status(ctx.sysroot_path)
    if as_json:
        click.echo(json.dumps(st.to_json(booted_only=booted_only), indent=2))
    else:
        _print_status(st, verbose, booted_only)
    if pending_exit_77 and st.pending_deployment:  # rpmostree-builtin-status.cxx
        sys.exit(EXIT_PENDING)


def _print_status(st: Status, verbose: bool, booted_only: bool = False) -> None:
    click.echo("BootedDeployment:" if booted_only else "Deployments:")
    if st.staged is not None and not booted_only:
        _print_staged(st.staged, verbose)
    for ds in st.deployments:
        d = ds.deployment
        if booted_only and not d.booted:
            continue
        mark = "●" if d.booted else " "
        tags = [t for t, on in (("booted", d.booted), ("pending", ds.pending), ("rollback", ds.rollback),
                                ("staged", d.staged), ("superseded by the staged deployment", ds.superseded))
                if on]
        # As rpm-ostree: the origin's refspec or image reference itself, the image's digest under it
        # (src/app/rpmostree-builtin-status.cxx print_one_deployment).
        click.echo(f"{mark} {d.origin.refspec}" + (f" ({', '.join(tags)})" if tags else ""))
        if ds.image_digest:
            click.echo(f"{'Digest':>19}: {ds.image_digest}")
        if ds.version:
            click.echo(f"{'Version':>19}: {ds.version}")
        if ds.base_checksum != d.checksum:
            click.echo(f"{'BaseCommit':>19}: {ds.base_checksum}")
        click.echo(f"{'Commit':>19}: {d.checksum}")
        if verbose:
            click.echo(f"{'StateRoot':>19}: {d.osname}")
            click.echo(f"{'Deployment':>19}: {d.path}")
        _print_overrides(ds.commit, ds.base_checksum)
        _print_requests(d.origin.requested, ds.inactive_requests, d.origin.requested_local)
        if d.booted and st.live is not None:
            _print_live_status(st.live)
        if verbose and ds.layered:
            click.echo(f"{'Packages':>19}: {' '.join(p.nevra for p in ds.layered)}")
        if verbose and ds.live_etc:
            click.echo(f"{'LiveEtcAdded':>19}: {' '.join(ds.live_etc)}")
        click.echo("")
    if st.pending_diff is not None and not st.pending_diff.empty and not booted_only:
        diff = st.pending_diff
        click.echo("Pending diff: " + _counts(diff))
        for p in diff.added:
            click.echo(f"  + {p.nevra}")
        for old, new in diff.upgraded:
            click.echo(f"  ~ {old.nevra} -> {new.nevra}")
        for p in diff.removed:
            click.echo(f"  - {p.nevra}")


def _print_requests(requested: tuple[str, ...], inactive: tuple[str, ...], local: tuple[str, ...] = ()) -> None:
    """LayeredPackages, LocalPackages (by NEVRA) and InactiveRequests (requests the base image provides), as
    rpm-ostree names them (src/app/rpmostree-builtin-status.cxx)."""
    layered = [r for r in requested if r not in inactive]
    if layered:
        click.echo(f"{'LayeredPackages':>19}: {' '.join(layered)}")
    if local:
        click.echo(f"{'LocalPackages':>19}: {' '.join(sorted(e.split(':', 1)[-1] for e in local))}")
    if inactive:
        click.echo(f"{'InactiveRequests':>19}: {' '.join(inactive)}")


def _print_overrides(commit: CommitInfo | None, base_checksum: str) -> None:
    """A layered commit's overrides as rpm-ostree prints them (src/app/rpmostree-builtin-status.cxx):
    RemovedBasePackages grouped by EVR ("NAME... EVR"), LocalOverrides grouped by change
    ("NAME... OLD -> NEW"; ReplacedBasePackages before rpm-ostree 2022.10, commit 5cc9bd3c),
    and RemoteOverrides under their source, one replacement a line."""
    if commit is None or commit.checksum == base_checksum:
        return
    ov = commit.base_overrides
    removed: dict[str, list[str]] = {}
    for p in ov.removed:
        removed.setdefault(p.evr, []).append(p.name)
    local: dict[str, list[str]] = {}
    for new, old in ov.local:
        local.setdefault(f"{old.evr} -> {new.evr}", []).append(new.name)
    for key, groups in (("RemovedBasePackages", removed), ("LocalOverrides", local)):
        if groups:
            click.echo(f"{key:>19}: " + " ".join(sorted(f"{' '.join(names)} {what}" for what, names in groups.items())))
    for source, pairs in sorted(ov.remote.items()):
        click.echo(f"{'RemoteOverrides':>19}: {source}")
        for i, (new, old) in enumerate(pairs):
            glyph = "└─" if i == len(pairs) - 1 else "├─"
            click.echo(f"{'':>19}  {glyph} {new.name} {old.evr} -> {new.evr}")


def _print_staged(ss: StagedStatus, verbose: bool) -> None:
    from lulayer.sysroot import Origin

    state = ("being written" if ss.being_written else
             f"write failed: {ss.staged.error}" if ss.staged.error else
             "not written yet; `lulayer finalize` or a reboot writes it")
    click.echo(f"  {ss.refspec} (pending, staged: {state})")
    if ss.image_digest:
        click.echo(f"{'Digest':>19}: {ss.image_digest}")
    if ss.commit is not None and ss.commit.version:
        click.echo(f"{'Version':>19}: {ss.commit.version}")
    if ss.base_checksum != ss.staged.commit:
        click.echo(f"{'BaseCommit':>19}: {ss.base_checksum}")
    click.echo(f"{'Commit':>19}: {ss.staged.commit}")
    _print_overrides(ss.commit, ss.base_checksum)
    _print_requests(ss.staged.requested, ss.inactive_requests, Origin.from_data(ss.staged.origin).requested_local)
    if verbose and ss.layered:
        click.echo(f"{'Packages':>19}: {' '.join(p.nevra for p in ss.layered)}")
    click.echo("")


def _counts(diff: PackageChanges) -> str:
    """`2 added, 1 upgraded`: the counts of a package change that are not zero."""
    parts = [(len(diff.added), "added"), (len(diff.upgraded), "upgraded"), (len(diff.removed), "removed")]
    return ", ".join(f"{n} {what}" for n, what in parts if n)


def _print_live_status(live: LiveStatus) -> None:
    if live.inprogress:
        click.secho(f"{'InterruptedLiveCommit':>19}: {live.inprogress}", fg="red", bold=True)
        click.secho(f"{'':>19}  run `lulayer apply-live` to finish it or `lulayer apply-live --reset`", fg="red")
    click.echo(f"{'LiveCommit':>19}: {live.commit}")
    diff = live.diff
    click.echo(f"{'LiveDiff':>19}: " + (_counts(diff) or "none"))
    if live.replaced:
        click.echo(f"{'LiveReplaced':>19}: files were replaced or removed live")
    if live.transient:
        click.echo(f"{'TransientPackages':>19}: {' '.join(live.transient)} (live only: gone at reboot)")


def main() -> None:
    signals.install()  # before anything: a signal is recorded, and the command stops at a safe point
    # A command lives a second or so and makes few reference cycles, so the cyclic collector's runs
    # free next to nothing: `install htop --live` ran it 74 times, 20 ms of its 0.25 s, and peak RSS
    # with it off went from 64.6 to 66.0 MiB for a 2,000-file package. The forked children inherit it.
    gc.disable()
    try:
        cli(prog_name="lulayer")
    finally:
        signals.hold()
