"""The command line: parse, call the core, print. The only module that imports click."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from lulayer import __version__
from lulayer.errors import LulayerError


@dataclass
class Context:
    sysroot_path: Path | None
    debug: bool


def _die(e: LulayerError) -> NoReturn:
    line = f"error: {e.message}" + (f"; {e.hint}" if e.hint else "")
    click.echo(line, err=True)
    sys.exit(e.exit_code)


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _progress() -> Callable[[str, int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(label: str, done: int, total: int) -> None:
        pct = f"{100 * done // total:3d}%" if total else "   "
        end = "\n" if total and done >= total else ""
        sys.stderr.write(f"\r  {label[:50]:50} {pct}{end}")
        sys.stderr.flush()

    return show


@contextmanager
def _locked(ctx: Context, *, write: bool = True, finish_live: bool = True,
            finish_staged: bool = True) -> Iterator[Any]:
    """The sysroot, locked for writing; a live update or a staged deployment that a killed
    run left is finished first."""
    from lulayer.lock import sysroot_lock
    from lulayer.sysroot import Sysroot, require_root

    if write:
        require_root()
    sysroot = Sysroot(ctx.sysroot_path)
    if not write:
        yield sysroot
        return
    with sysroot_lock(sysroot, on_wait=_say):
        if finish_live:
            from lulayer.apply.live import finish_interrupted

            done = finish_interrupted(sysroot, _say)
            if done is not None:
                _print_live(done)
        if finish_staged:
            from lulayer.layering.staged import finalize

            dep = finalize(sysroot)
            if dep is not None:
                _say(f"Wrote the deployment staged for the next boot: {dep.name}")
        yield sysroot


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


def _print_changes(result: Any, where: str) -> None:
    ch = result.changes
    for p in ch.added:
        click.echo(f"  Added: {p.nevra}")
    for old, new in ch.upgraded:
        click.echo(f"  Upgraded: {old.nevra} -> {new.nevra}")
    for p in ch.removed:
        click.echo(f"  Removed: {p.nevra}")
    if result.message:
        click.echo(result.message)
    elif result.dry_run:
        click.echo(f"Dry run: nothing was changed; these changes would go to the {where}.")
    elif ch.empty:
        click.echo(f"No package changes; a new deployment was made for the {where}.")
    else:
        click.echo(f"Changes queued for the {where}. Run `systemctl reboot` to start using them.")


def _print_live(r: Any) -> None:
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


def _live_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--allow-replacement", is_flag=True,
                     help="With --live: allow replacing or removing existing files and packages.")(f)
    return click.option("-A", "--live", "--apply-live", "live", is_flag=True,
                        help="Also apply the change to the running system, without a reboot.")(f)


def _layer(ctx: Context, op: str, live: bool, allow_replacement: bool, **kwargs: Any) -> None:
    from lulayer.layering.layer import Layering

    with _locked(ctx) as sysroot:
        # With --live the next boot's deployment is staged: written after the live update, detached.
        result = getattr(Layering(sysroot, progress=_progress(), say=_say), op)(stage=live, **kwargs)
        _print_changes(result, "next boot")
        if live and not result.dry_run:
            from lulayer.apply.live import apply_live
            from lulayer.layering.staged import finalize

            target = result.commit or sysroot.deployments()[0].checksum
            try:
                live_result = apply_live(sysroot, target, allow_replacement=allow_replacement,
                                         allow_removal=op == "uninstall", say=_say)
            except Exception:
                # A refused or failed live apply still leaves the next boot's deployment. Should that
                # fail too, it is recorded (status shows it); the live apply's error is the one to report.
                with suppress(LulayerError):
                    finalize(sysroot)
                raise
            _print_live(live_result)
        if result.staged is not None:
            _write_staged(sysroot)


def _write_staged(sysroot: Any) -> None:
    from lulayer.layering.staged import finalize, finalize_detached

    if finalize_detached(sysroot, sysroot.run_dir / "lulayer" / "finalize.log"):
        click.echo("The next boot's deployment is being written in the background; a reboot waits for it.")
        sys.stdout.flush()
        os._exit(0)  # the detached child holds the lock now: leave without releasing it
    finalize(sysroot)


@cli.command()
@click.argument("packages", nargs=-1, required=True)
@click.option("-n", "--dry-run", is_flag=True, help="Resolve and show the changes; change nothing.")
@click.option("--idempotent", is_flag=True, help="Do nothing when a package is already requested.")
@_live_options
@click.pass_obj
def install(ctx: Context, packages: tuple[str, ...], dry_run: bool, idempotent: bool, live: bool,
            allow_replacement: bool) -> None:
    """Layer PACKAGES onto the image, for the next boot (and now, with --live)."""
    _layer(ctx, "install", live, allow_replacement, names=packages, dry_run=dry_run, idempotent=idempotent)


@cli.command()
@click.argument("packages", nargs=-1)
@click.option("-a", "--all", "remove_all", is_flag=True, help="Remove every layered package.")
@click.option("-n", "--dry-run", is_flag=True, help="Show the changes; change nothing.")
@_live_options
@click.pass_obj
def uninstall(ctx: Context, packages: tuple[str, ...], remove_all: bool, dry_run: bool, live: bool,
              allow_replacement: bool) -> None:
    """Remove layered PACKAGES (no names, or --all: every layered package)."""
    _layer(ctx, "uninstall", live, allow_replacement, names=packages, remove_all=remove_all, dry_run=dry_run)


@cli.command()
@click.option("-n", "--dry-run", is_flag=True, help="Show the changes; change nothing.")
@_live_options
@click.pass_obj
def upgrade(ctx: Context, dry_run: bool, live: bool, allow_replacement: bool) -> None:
    """Newest base commit of the origin's ref, layered packages at their newest versions."""
    _layer(ctx, "upgrade", live, allow_replacement, dry_run=dry_run)


@cli.command("apply-live")
@click.option("--reset", is_flag=True, help="Return the live /usr to the booted commit.")
@click.option("--allow-replacement", is_flag=True, help="Allow replacing or removing existing files and packages.")
@click.pass_obj
def apply_live_cmd(ctx: Context, reset: bool, allow_replacement: bool) -> None:
    """Apply the pending deployment to the running system, without a reboot."""
    from lulayer.apply.live import apply_live
    from lulayer.apply.live import reset as live_reset
    from lulayer.errors import LiveApplyError

    with _locked(ctx, finish_live=not reset) as sysroot:
        if reset:
            r = live_reset(sysroot, _say)
            click.echo(f"Live /usr reset to the booted commit {r.target[:12]}.")
            return
        pending = sysroot.pending()
        if pending is None:
            raise LiveApplyError("there is no pending deployment to apply",
                                 hint="make one with `lulayer install PKG`, or pass --reset")
        _print_live(apply_live(sysroot, pending.checksum, allow_replacement=allow_replacement, say=_say))


@cli.command()
@click.pass_obj
def finalize(ctx: Context) -> None:
    """Write a deployment staged by `--live` now (on a host, shutdown does it too)."""
    with _locked(ctx, finish_staged=False) as sysroot:
        from lulayer.layering.staged import finalize as write_staged

        dep = write_staged(sysroot)
    click.echo(f"Wrote the staged deployment {dep.name}." if dep else "No staged deployment to write.")


@cli.command()
@click.pass_obj
def rollback(ctx: Context) -> None:
    """Make the previous deployment the default for the next boot."""
    from lulayer.layering.deploy import rollback as do_rollback

    with _locked(ctx) as sysroot:
        dep = do_rollback(sysroot)
    click.echo(f"Moving {dep.checksum[:12]}.{dep.serial} to be first deployment. Reboot to use it.")


@cli.command()
@click.option("-p", "--pending", is_flag=True, help="Remove the pending deployment.")
@click.option("-r", "--rollback", "rollback_", is_flag=True, help="Remove the rollback deployment.")
@click.option("-m", "--repomd", is_flag=True, help="Remove cached repository metadata and packages.")
@click.pass_obj
def cleanup(ctx: Context, pending: bool, rollback_: bool, repomd: bool) -> None:
    """Remove pending or rollback deployments, caches, and unreferenced objects."""
    from lulayer.layering.cleanup import cleanup as do_cleanup

    if not (pending or rollback_ or repomd):
        raise click.UsageError("say what to clean: --pending, --rollback and/or --repomd")
    with _locked(ctx, finish_staged=not pending) as sysroot:
        for line in do_cleanup(sysroot, pending=pending, rollback=rollback_, repomd=repomd):
            click.echo(line)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="rpm-ostree's JSON layout.")
@click.option("-v", "--verbose", is_flag=True, help="Show more of each deployment.")
@click.pass_obj
def status(ctx: Context, as_json: bool, verbose: bool) -> None:
    """The deployments in boot order, the booted one marked."""
    from lulayer.layering.status import read_status

    with _locked(ctx, write=False) as sysroot:
        st = read_status(sysroot)
    if as_json:
        click.echo(json.dumps(st.to_json(), indent=2))
        return
    click.echo("Deployments:")
    if st.staged is not None:
        _print_staged(st.staged, verbose)
    for ds in st.deployments:
        d = ds.deployment
        mark = "●" if d.booted else " "
        tags = [t for t, on in (("booted", d.booted), ("pending", ds.pending), ("rollback", ds.rollback),
                                ("staged", d.staged), ("superseded by the staged deployment", ds.superseded))
                if on]
        click.echo(f"{mark} {d.osname}:{d.origin.refspec}" + (f" ({', '.join(tags)})" if tags else ""))
        if ds.version:
            click.echo(f"{'Version':>19}: {ds.version}")
        if ds.base_checksum != d.checksum:
            click.echo(f"{'BaseCommit':>19}: {ds.base_checksum}")
        click.echo(f"{'Commit':>19}: {d.checksum}")
        if verbose:
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


def _print_staged(ss: Any, verbose: bool) -> None:
    state = ("being written" if ss.being_written else
             f"write failed: {ss.staged.error}" if ss.staged.error else
             "not written yet; `lulayer finalize` or a reboot writes it")
    click.echo(f"  {ss.osname}:{ss.refspec} (pending, staged: {state})")
    if ss.base_checksum != ss.staged.commit:
        click.echo(f"{'BaseCommit':>19}: {ss.base_checksum}")
    click.echo(f"{'Commit':>19}: {ss.staged.commit}")
    if ss.staged.requested:
        click.echo(f"{'LayeredPackages':>19}: {' '.join(ss.staged.requested)}")
    if verbose and ss.layered:
        click.echo(f"{'Packages':>19}: {' '.join(p.nevra for p in ss.layered)}")
    click.echo("")


def _print_live_status(live: Any) -> None:
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
