"""Staged deployments: the next boot's deployment, written after a live update returns.

Writing a deployment is a hardlink checkout of the whole image, which grows
with the image (2 s for 100k files here) while a live update grows with the
change. With --live the change is already in use when the new commit exists,
so lulayer records what to deploy (the commit, its origin, the deployment it
builds on) durably, applies it live, returns, and leaves the deployment to a
detached child that inherits the sysroot lock. As with rpm-ostree's staged
deployments, the write is finished before the next boot: on a host by
lulayer-finalize.service at shutdown, on a folder sysroot by whatever reboots
it (fixtures.build.reboot). Every lulayer command that takes the lock first
finishes a staged deployment that is still recorded (a killed child, a crash),
so the request is never lost; a failed write is recorded and shown by status.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
from dataclasses import asdict, dataclass, replace

from lulayer import signals
from lulayer.errors import CommandError, LulayerError, SysrootError
from lulayer.faults import fault
from lulayer.fsutil import opened_dir, remove_stale_temps, suppress_errno, write_record
from lulayer.run import fork_child, run
from lulayer.sysroot import Deployment, Origin, Sysroot

WRITER = "writing the staged deployment for the next boot"  # the detached child, as lock holder
# On a host the shutdown hook: its ExecStop= finishes a staged deployment before the reboot.
FINALIZE_UNIT = "lulayer-finalize.service"


@dataclass(frozen=True)
class StagedDeployment:
    commit: str
    origin: str  # the .origin key file's text
    merge: str  # the deployment it builds on (CHECKSUM.SERIAL): its /etc is merged in
    requested: tuple[str, ...]
    error: str | None = None  # why the last write failed

    @classmethod
    def of(cls, commit: str, origin: Origin, merge: Deployment) -> StagedDeployment:
        data, _ = origin.to_keyfile().to_data()
        return cls(commit, data, merge.name, origin.requested)


def read(sysroot: Sysroot) -> StagedDeployment | None:
    try:
        raw = json.loads(sysroot.staged_record.read_text())
        return StagedDeployment(raw["commit"], raw["origin"], raw["merge"], tuple(raw["requested"]), raw.get("error"))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise SysrootError(f"{sysroot.staged_record} is corrupt ({e})",
                           hint="remove it and run the install again") from e


def write(sysroot: Sysroot, staged: StagedDeployment) -> None:
    record = sysroot.staged_record
    record.parent.mkdir(parents=True, exist_ok=True)
    with opened_dir(record.parent) as fd:
        write_record(fd, record.name, json.dumps(asdict(staged), indent=1).encode() + b"\n")


def clear(sysroot: Sysroot) -> None:
    record = sysroot.staged_record
    with opened_dir(record.parent) as fd, suppress_errno(errno.ENOENT):
        os.unlink(record.name, dir_fd=fd)
        os.fsync(fd)


def finalize(sysroot: Sysroot) -> Deployment | None:
    """Write the staged deployment, if one is recorded (the caller holds the lock)."""
    from lulayer.layering.deploy import deploy

    record = sysroot.staged_record
    if record.parent.is_dir():  # what a write of the record killed half-way left
        with opened_dir(record.parent) as fd:
            remove_stale_temps(fd, record.name)
    staged = read(sysroot)
    if staged is None:
        return None
    pending = sysroot.pending()
    if pending is not None and pending.checksum == staged.commit and pending.origin.requested == staged.requested:
        clear(sysroot)  # written; the record outlived the write (killed in between)
        return pending
    # Its /etc is merged into the new deployment's; gone (a crash, then cleanup), the booted one's is.
    merge = next((d for d in sysroot.deployments() if d.name == staged.merge), None) or sysroot.booted()
    try:
        dep = deploy(sysroot, staged.commit, Origin.from_data(staged.origin), merge)
    except LulayerError as e:
        write(sysroot, replace(staged, error=str(e)))
        raise SysrootError(f"writing the staged deployment of {staged.commit[:12]} failed: {e.message}",
                           hint=e.hint or "fix that and run any lulayer command, or drop it with "
                                          "`lulayer cleanup --pending`") from e
    clear(sysroot)
    return dep


def drop(sysroot: Sysroot) -> StagedDeployment | None:
    """Forget the staged deployment without writing it."""
    staged = read(sysroot)
    if staged is not None:
        clear(sysroot)
    return staged


def being_written(sysroot: Sysroot) -> bool:
    """Whether a detached child is writing the staged deployment now."""
    from lulayer.lock import held_for

    return held_for(sysroot, WRITER)


def _single_threaded() -> bool:
    return len(os.listdir("/proc/self/task")) == 1


def _arm_shutdown_hook() -> bool:
    """On a host: start the unit whose ExecStop= finishes the deployment at shutdown."""
    try:
        return run(["systemctl", "start", FINALIZE_UNIT], check=False).returncode == 0
    except CommandError:  # no systemctl
        return False


def can_detach(sysroot: Sysroot) -> bool:
    """Whether the staged deployment can be left to a detached child: not from a threaded
    process (a fork copies one thread), and on a host only with the shutdown hook armed."""
    return _single_threaded() and (sysroot.folder or _arm_shutdown_hook())


def write_detached(sysroot: Sysroot) -> None:
    """Fork the child that writes the staged deployment, holding the sysroot lock it
    inherits; it logs to sysroot.finalize_log. The caller must then leave with os._exit:
    a normal exit would release the lock the child holds now."""

    def child() -> None:
        from lulayer.lock import inherited_lock

        signals.ignore_terminal()
        os.setsid()
        os.chdir("/")  # hold no mount busy
        with inherited_lock(sysroot, WRITER):
            fault("staged-stop", signal.SIGSTOP)
            fault("staged-write")
            dep = finalize(sysroot)
        print(f"wrote {dep.name if dep else 'nothing'}")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} kB")

    log = sysroot.finalize_log
    log.parent.mkdir(parents=True, exist_ok=True)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        fork_child(child, out)
    finally:
        os.close(out)
