"""The one subprocess wrapper: it logs the command line when a command fails."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from lulayer.errors import CommandError

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
