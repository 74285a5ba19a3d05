"""The one subprocess wrapper (it logs the command line when a command fails), and the one fork."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shlex
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lulayer import linux, signals
from lulayer.errors import CommandError, LulayerError
from lulayer.mounts import MountNamespace, join_host_mount_namespace, unshare_mount_namespace

log = logging.getLogger(__name__)


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; raise CommandError with its stderr when it fails and check is set."""
    args = [str(a) for a in argv]
    log.debug("running %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            check=False,
            capture_output=capture,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            input=input,
        )
    except FileNotFoundError as e:
        raise CommandError(f"{args[0]} is not installed", hint="install it and retry") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        log.error("command failed: %s", shlex.join(args))
        raise CommandError(f"{args[0]} failed: {last}")
    return proc


def fork_child(work: Callable[[], None], output: int, report: int | None = None) -> int:
    """Fork a child that runs work, with stdin from /dev/null and stdout and stderr on the
    fd output, and exits: 0, or 1 once the error is written there (`error: MESSAGE` for a
    LulayerError, else a traceback) and, pickled, to the fd report. The parent gets the
    child's pid; the child never returns into the caller's code."""
    sys.stdout.flush()  # what is buffered is the parent's to write, not the child's
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        work()
        code = 0
    except LulayerError as e:
        os.write(2, f"\nerror: {e}\n".encode())
        _report(report, e)
    except BaseException:  # the child reports; it must never unwind into the parent's code
        text = traceback.format_exc()
        os.write(2, ("\n" + text).encode())
        _report(report, ChildFailed(text.rstrip()))
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class ChildFailed(Exception):
    """A forked child raised something other than a LulayerError: a bug, reported with the
    child's own traceback."""


def _report(fd: int | None, exc: BaseException) -> None:
    if fd is None:
        return
    data = pickle.dumps(exc)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def run_in_child(name: str, work: Callable[[], None], *,
                 mount_namespace: MountNamespace = MountNamespace.INHERITED) -> None:
    """Run work in a forked child and wait for it, as if it ran here: what it raises is
    raised here (a LulayerError as it is, anything else as ChildFailed with its traceback).

    The child is named name (/proc/PID/comm) and dies with us (PR_SET_PDEATHSIG). It leads a
    process group of its own, so a Ctrl-C on the terminal reaches us alone: on INT, TERM or
    HUP we kill the group (its scriptlets too) and wait for it before raising Interrupted,
    so nothing writes into what the caller then removes. Its mounts go where mount_namespace
    says: PRIVATE, a mount namespace of its own, so they vanish with it, even when it is
    killed; HOST, PID 1's, so every process sees them. A fork, not a new interpreter: the
    child has every module already imported (and one thread, as setns wants). Its output
    (scriptlets') goes to a temporary file.
    """

    def child() -> None:
        os.setpgid(0, 0)
        signals.restore_defaults()
        linux.set_pdeathsig(signal.SIGKILL)
        linux.set_name(name)
        if mount_namespace is MountNamespace.PRIVATE:
            unshare_mount_namespace()
        elif mount_namespace is MountNamespace.HOST:
            join_host_mount_namespace()
        work()

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    with tempfile.TemporaryFile() as log:
        try:
            pid = fork_child(child, log.fileno(), report=write_end)
        finally:
            os.close(write_end)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpgid(pid, pid)  # the child does it too: whichever runs first
        with signals.child_group(pid), os.fdopen(read_end, "rb") as reports:
            reported = reports.read()
            _, status = os.waitpid(pid, 0)
    signals.checkpoint()  # killed for a signal: that is what to report, not its death
    if reported:
        raise pickle.loads(reported)
    if status != 0:
        raise LulayerError(f"the {name} process died ({_describe_status(status)})")


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
