"""After a live apply: the new packages' units, users, groups and tmpfiles entries take effect.

rpm-ostree's apply-live leaves these to the next boot (rpm-ostree issue 962): a service that runs
as its own user cannot start until then. Here, once the live /usr holds the target:
  1. systemd-sysusers on the sysusers.d files the update added or changed, then
  2. systemd-tmpfiles --create on the tmpfiles.d files it added or changed (the links in /var of
     layering/vardirs.py among them), each only on those files, so nothing else the
     administrator changed is touched; on a folder sysroot both run with --root on the live root;
  3. the links in /var to /opt and /usr/local content the update removed go;
  4. the users and groups made are added to the next boot's /etc when that deployment is
     already written (a deployment written later merges the live /etc, which has them), so the
     next boot keeps the same numeric ids the files made now are owned by;
  5. on a host, systemctl daemon-reload when units changed.
A failure of one step is one warning line; the file change stays applied.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lulayer.apply.diff import TreeDiff
from lulayer.errors import CommandError
from lulayer.fsutil import opened_dir, write_file_atomic
from lulayer.layering import vardirs
from lulayer.run import run

SYSUSERS_DIR = "/usr/lib/sysusers.d/"
TMPFILES_DIR = "/usr/lib/tmpfiles.d/"
UNIT_DIRS = ("/usr/lib/systemd/system/", "/usr/lib/systemd/user/")
# The account databases systemd-sysusers writes, one entry a line, the name first.
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")


@dataclass(frozen=True)
class SystemConfig:
    """What the new configuration did to the running system."""

    units: tuple[str, ...] = ()  # unit files added, changed or removed (names)
    users: tuple[str, ...] = ()  # users and groups created ("user NAME", "group NAME")
    warnings: tuple[str, ...] = ()


def _new_confs(diff: TreeDiff, folder: str) -> list[str]:
    return sorted(e.path for e in (*diff.added_files, *diff.changed_files)
                  if e.path.startswith(folder) and e.path.endswith(".conf"))


def _accounts(etc: Path) -> dict[str, list[str]]:
    """Each account database's lines, by file name (missing files: no lines)."""
    out = {}
    for name in ACCOUNT_FILES:
        try:
            out[name] = (etc / name).read_text().splitlines()
        except FileNotFoundError:
            out[name] = []
    return out


def _names(lines: Iterable[str]) -> set[str]:
    return {line.split(":", 1)[0] for line in lines if line and not line.startswith(("#", "+", "-"))}


def _run_tool(argv: list[str], what: str, root: Path, folder: bool) -> str | None:
    """Run a systemd tool; its failure is one warning line (its last line of output), not an error."""
    try:
        proc = run(argv, check=False)
    except CommandError as e:  # not installed
        return f"{what} failed: {e.message}"
    if proc.returncode == 0:
        return None
    said = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    last = said[-1] if said else f"exit status {proc.returncode}"
    if folder:  # name files as the live root sees them
        last = last.replace(str(root), "")
    return f"{what} failed: {last}"


def apply_config(root: Path, diff: TreeDiff, old_links: tuple[vardirs.Link, ...], *, folder: bool,
                 next_etc: Path | None) -> SystemConfig:
    """Apply diff's new sysusers.d and tmpfiles.d files to the live root; see the module
    docstring. old_links are the /var links the live root's /usr asked for before the update;
    next_etc is the /etc of the written deployment that boots next, if any."""
    warnings: list[str] = []
    tool_root = [f"--root={root}"] if folder else []

    def in_root(path: str) -> str:  # with --root, the tools take the files' host paths
        return str(root / path.lstrip("/")) if folder else path

    sysusers = _new_confs(diff, SYSUSERS_DIR)
    users: list[str] = []
    if sysusers:
        before = _accounts(root / "etc")
        failed = _run_tool(["systemd-sysusers", *tool_root, *map(in_root, sysusers)], "systemd-sysusers", root, folder)
        if failed:
            warnings.append(failed)
        after = _accounts(root / "etc")
        added = {name: [ln for ln in after[name] if ln.split(":", 1)[0] in _names(after[name]) - _names(before[name])]
                 for name in ACCOUNT_FILES}
        users = [f"user {n}" for n in sorted(_names(added["passwd"]))]
        users += [f"group {n}" for n in sorted(_names(added["group"]))]
        if next_etc is not None and any(added.values()):
            try:
                _carry_accounts(next_etc, added)
            except OSError as e:
                warnings.append(f"adding the new users to the next boot's {next_etc / 'passwd'} failed: {e}")

    tmpfiles = _new_confs(diff, TMPFILES_DIR)
    if str(vardirs.TMPFILES_CONF) in tmpfiles:
        warnings += link_clashes(root, vardirs.read_links(root))
    if tmpfiles:
        failed = _run_tool(["systemd-tmpfiles", "--create", *tool_root, *map(in_root, tmpfiles)],
                           "systemd-tmpfiles --create", root, folder)
        if failed:
            warnings.append(failed)

    kept = set(vardirs.read_links(root))
    for link in old_links:
        if link not in kept and vardirs.is_our_link(root, link):
            try:
                (root / str(link.path).lstrip("/")).unlink()
            except OSError as e:
                warnings.append(f"removing the link {link.path} failed: {e.strerror}")

    units = sorted({PurePosixPath(p).name for p in diff.paths() if p.startswith(UNIT_DIRS)})
    if units and not folder and Path("/run/systemd/system").is_dir():
        failed = _run_tool(["systemctl", "daemon-reload"], "systemctl daemon-reload", root, folder)
        if failed:
            warnings.append(failed)
    return SystemConfig(units=tuple(units), users=tuple(users), warnings=tuple(warnings))


def link_clashes(root: Path, links: Iterable[vardirs.Link]) -> list[str]:
    """One line for each link whose place in root's /var holds something else (an
    administrator's own): tmpfiles.d's `L` keeps it, and the package content is not reached there."""
    return [f"{link.path} is already there and is kept, so /{link.target.lstrip('./')} is not reachable "
            f"there; move it away and run `systemd-tmpfiles --create`"
            for link in links
            if os.path.lexists(root / str(link.path).lstrip("/")) and not vardirs.is_our_link(root, link)]


def _carry_accounts(etc: Path, added: dict[str, list[str]]) -> None:
    """Append the added account lines to etc's databases, for names they lack (a new file each,
    renamed over the old, with its mode and owner)."""
    with opened_dir(etc) as fd:
        for name, lines in added.items():
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                old = (etc / name).read_text()
            except FileNotFoundError:
                continue  # a database the deployment does not keep
            have = _names(old.splitlines())
            new = [ln for ln in lines if ln.split(":", 1)[0] not in have]
            if not new:
                continue
            text = old + ("" if not old or old.endswith("\n") else "\n") + "".join(f"{ln}\n" for ln in new)
            write_file_atomic(fd, name, text.encode(), mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid)
