"""The command line: parse, call the core, print. The only module that imports click."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from lulayer import __version__
from lulayer.errors import LulayerError

if TYPE_CHECKING:  # the core is imported when a command runs, not for --help
    from lulayer.apply.live import LiveResult
    from lulayer.layering.layer import LayerResult
    from lulayer.layering.status import LiveStatus, StagedStatus, Status
    from lulayer.layering.transaction import LayerOutcome, Recovery, Transaction


@dataclass
class Context:
    sysroot_path: Path | None
    debug: bool


def _die(e: LulayerError) -> NoReturn:
    line = f"error: {e.message}" + (f"; {e.hint}" if e.hint else "")
    click.echo(line, err=True)
    sys.exit(e.exit_code)


class _TerminalReporter:
    """The core's reports (transaction.Reporter), as lines on stderr and a progress line on a terminal."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()

    def say(self, message: str) -> None:
        click.echo(message, err=True)

    def progress(self, label: str, done: int, total: int) -> None:
        if not self._tty:
            return
        pct = f"{100 * done // total:3d}%" if total else "   "
        end = "\n" if total and done >= total else ""
        sys.stderr.write(f"\r  {label[:50]:50} {pct}{end}")
        sys.stderr.flush()

    def recovered(self, recovery: Recovery) -> None:
        if recovery.live is not None:
            _print_live(recovery.live)
        if recovery.staged is not None:
            self.say(f"Wrote the deployment staged for the next boot: {recovery.staged.name}")


def _transaction(ctx: Context) -> AbstractContextManager[Transaction]:
    from lulayer.layering.transaction import Transaction

    return Transaction.begin(ctx.sysroot_path, _TerminalReporter())


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LulayerError as e:
            if ctx.obj is not None and ctx.obj.debug:
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
        click.echo(f"Changes queued for the {where}. Run `systemctl reboot` to start using them.")


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
    if r.units:
        click.echo("Units changed (restart the services that use them): " + " ".join(r.units))


def _print_outcome(outcome: LayerOutcome) -> None:
    from lulayer.layering.transaction import NextBoot

    _print_changes(outcome.layer, "next boot")
    if outcome.live is not None:
        _print_live(outcome.live)
    if outcome.next_boot is NextBoot.BEING_WRITTEN:
        click.echo("The next boot's deployment is being written in the background; a reboot waits for it.")


def _live_options(f: Callable[..., None]) -> Callable[..., None]:
    f = click.option("--allow-replacement", is_flag=True,
                     help="With --live: allow replacing or removing existing files and packages.")(f)
    return click.option("-A", "--live", "--apply-live", "live", is_flag=True,
                        help="Also apply the change to the running system, without a reboot.")(f)


@cli.command()
@click.argument("packages", nargs=-1, required=True)
@click.option("-n", "--dry-run", is_flag=True, help="Resolve and show the changes; change nothing.")
@click.option("--idempotent", is_flag=True, help="Do nothing when a package is already requested.")
@_live_options
@click.pass_obj
def install(ctx: Context, packages: tuple[str, ...], dry_run: bool, idempotent: bool, live: bool,
            allow_replacement: bool) -> None:
    """Layer PACKAGES onto the image, for the next boot (and now, with --live)."""
    with _transaction(ctx) as tx:
        _print_outcome(tx.install(packages, dry_run=dry_run, idempotent=idempotent, live=live,
                                  allow_replacement=allow_replacement))


@cli.command()
@click.argument("packages", nargs=-1)
@click.option("-a", "--all", "remove_all", is_flag=True, help="Remove every layered package.")
@click.option("-n", "--dry-run", is_flag=True, help="Show the changes; change nothing.")
@_live_options
@click.pass_obj
def uninstall(ctx: Context, packages: tuple[str, ...], remove_all: bool, dry_run: bool, live: bool,
              allow_replacement: bool) -> None:
    """Remove layered PACKAGES (no names, or --all: every layered package)."""
    with _transaction(ctx) as tx:
        _print_outcome(tx.uninstall(packages, remove_all=remove_all, dry_run=dry_run, live=live,
                                    allow_replacement=allow_replacement))


@cli.command()
@click.option("-n", "--dry-run", is_flag=True, help="Show the changes; change nothing.")
@_live_options
@click.pass_obj
def upgrade(ctx: Context, dry_run: bool, live: bool, allow_replacement: bool) -> None:
    """Newest base commit held for the origin (its ref, or its image), layered packages at their newest versions."""
    with _transaction(ctx) as tx:
        _print_outcome(tx.upgrade(dry_run=dry_run, live=live, allow_replacement=allow_replacement))


@cli.command("apply-live")
@click.option("--reset", is_flag=True, help="Return the live /usr to the booted commit.")
@click.option("--allow-replacement", is_flag=True, help="Allow replacing or removing existing files and packages.")
@click.pass_obj
def apply_live(ctx: Context, reset: bool, allow_replacement: bool) -> None:
    """Apply the pending deployment to the running system, without a reboot."""
    with _transaction(ctx) as tx:
        if reset:
            r = tx.reset_live()
            click.echo(f"Live /usr reset to the booted commit {r.target[:12]}.")
            return
        _print_live(tx.apply_live(allow_replacement=allow_replacement))


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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="rpm-ostree's JSON layout.")
@click.option("-v", "--verbose", is_flag=True, help="Show more of each deployment.")
@click.pass_obj
def status(ctx: Context, as_json: bool, verbose: bool) -> None:
    """The deployments in boot order, the booted one marked."""
    from lulayer.layering.transaction import status as read_status

    st = read_status(ctx.sysroot_path)
    if as_json:
        click.echo(json.dumps(st.to_json(), indent=2))
        return
    _print_status(st, verbose)


def _print_status(st: Status, verbose: bool) -> None:
    click.echo("Deployments:")
    if st.staged is not None:
        _print_staged(st.staged, verbose)
    for ds in st.deployments:
        d = ds.deployment
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
        if d.origin.requested:
            click.echo(f"{'LayeredPackages':>19}: {' '.join(d.origin.requested)}")
        if d.booted and st.live is not None:
            _print_live_status(st.live)
        if verbose and ds.layered:
            click.echo(f"{'Packages':>19}: {' '.join(p.nevra for p in ds.layered)}")
        click.echo("")
    if st.pending_diff is not None and not st.pending_diff.empty:
        diff = st.pending_diff
        parts = [f"{len(diff.added)} added" if diff.added else "",
                 f"{len(diff.upgraded)} upgraded" if diff.upgraded else "",
                 f"{len(diff.removed)} removed" if diff.removed else ""]
        click.echo("Pending diff: " + ", ".join(p for p in parts if p))
        for p in diff.added:
            click.echo(f"  + {p.nevra}")
        for old, new in diff.upgraded:
            click.echo(f"  ~ {old.nevra} -> {new.nevra}")
        for p in diff.removed:
            click.echo(f"  - {p.nevra}")


def _print_staged(ss: StagedStatus, verbose: bool) -> None:
    state = ("being written" if ss.being_written else
             f"write failed: {ss.staged.error}" if ss.staged.error else
             "not written yet; `lulayer finalize` or a reboot writes it")
    click.echo(f"  {ss.refspec} (pending, staged: {state})")
    if ss.image_digest:
        click.echo(f"{'Digest':>19}: {ss.image_digest}")
    if ss.base_checksum != ss.staged.commit:
        click.echo(f"{'BaseCommit':>19}: {ss.base_checksum}")
    click.echo(f"{'Commit':>19}: {ss.staged.commit}")
    if ss.staged.requested:
        click.echo(f"{'LayeredPackages':>19}: {' '.join(ss.staged.requested)}")
    if verbose and ss.layered:
        click.echo(f"{'Packages':>19}: {' '.join(p.nevra for p in ss.layered)}")
    click.echo("")


def _print_live_status(live: LiveStatus) -> None:
    if live.inprogress:
        click.secho(f"{'InterruptedLiveCommit':>19}: {live.inprogress}", fg="red", bold=True)
        click.secho(f"{'':>19}  run `lulayer apply-live` to finish it or `lulayer apply-live --reset`", fg="red")
    click.echo(f"{'LiveCommit':>19}: {live.commit}")
    diff = live.diff
    parts = [f"{len(diff.added)} added" if diff.added else "",
             f"{len(diff.upgraded)} upgraded" if diff.upgraded else "",
             f"{len(diff.removed)} removed" if diff.removed else ""]
    click.echo(f"{'LiveDiff':>19}: " + (", ".join(p for p in parts if p) or "none"))
    if live.replaced:
        click.echo(f"{'LiveReplaced':>19}: files were replaced or removed live")


def main() -> None:
    cli(prog_name="lulayer")
