"""The one subprocess wrapper (it logs the command line when a command fails), and the one fork."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lulayer.errors import CommandError, LulayerError

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


def fork_child(work: Callable[[], None], output: int) -> int:
    """Fork a child that runs work, with stdin from /dev/null and stdout and stderr on the
    fd output, and exits: 0, or 1 once the error is written there (`error: MESSAGE` for a
    LulayerError, else a traceback). The parent gets the child's pid; the child never
    returns into the caller's code."""
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
    except BaseException:  # the child reports; it must never unwind into the parent's code
        os.write(2, ("\n" + traceback.format_exc()).encode())
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
