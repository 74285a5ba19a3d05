"""SIGINT, SIGTERM and SIGHUP: a command stops at its next safe point, never half way.

The handlers the CLI installs (install()) only record the signal, and stop the
helper processes a command waits for (register_child): they never raise, so no
exception can cross a libostree or rpm callback (PyGObject swallows it and the C
side goes on) or tear a step that must not stop half way. The core calls
checkpoint() between steps: there a recorded signal raises Interrupted, which
leaves things exactly as a SIGKILL at that point would, for the next command (or
`lulayer apply-live --reset`) to recover. Inside critical() checkpoints wait for
the end of the block. reached() names what is on disk so far, for the one line
the CLI prints: `interrupted: WHAT`, exit 128+N as a shell reports a signal.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from types import FrameType

from lulayer.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stage(StrEnum):
    """How far a command has come, as the line after an interruption tells it."""

    UNCHANGED = "nothing was changed"
    DEPLOYED = "the new deployment was written; it boots next"
    STAGED = "the next boot's deployment is recorded, not yet written; the next lulayer command writes it"
    LIVE = ("the live update is in progress (status: InterruptedLiveCommit); the next lulayer command "
            "(or `lulayer apply-live --reset`) finishes it")
    LIVE_AHEAD = ("the new packages went live ahead of their deployment, which was not finished; the next lulayer "
                  "command (or `lulayer apply-live --reset`) takes them back")
    LIVE_DONE = "the live update was applied"
    LIVE_DONE_STAGED = ("the live update was applied; the next boot's deployment is recorded, not yet written; "
                        "the next lulayer command writes it")
    RESET = ("the return of the live /usr to the booted commit is in progress; "
             "the next lulayer command finishes it")

_received: int | None = None
_stage = Stage.UNCHANGED
_critical = 0
_children: set[int] = set()  # process groups to stop on a signal


def _record(signum: int, _frame: FrameType | None) -> None:
    global _received
    if _received is None:  # the first one names the exit code; more change nothing
        _received = signum
    for pgid in list(_children):
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def install() -> None:
    """Record INT, TERM and HUP instead of dying (the CLI calls this first)."""
    for sig in HANDLED:
        signal.signal(sig, _record)


def restore_defaults() -> None:
    """In a forked helper: the signals kill it again, as they would any process."""
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_DFL)


def ignore_terminal() -> None:
    """In the detached writer: Ctrl-C and a closed terminal do not stop it (SIGTERM at
    shutdown still does; lulayer-finalize.service writes the deployment then)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def hold() -> None:
    """The command is over: block INT, TERM and HUP for the interpreter's exit, which puts the
    default actions back (a signal then would turn a finished command into one killed)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


def received() -> int | None:
    """The signal recorded, if one arrived."""
    return _received


def reached(stage: Stage) -> None:
    """Say what is on disk now: the state an interruption from here on reports."""
    global _stage
    _stage = stage


def stage() -> Stage:
    return _stage


def interrupted() -> Interrupted | None:
    """The error that reports the recorded signal, or None when none arrived."""
    return None if _received is None else Interrupted(_received, str(_stage))


def checkpoint() -> None:
    """A safe point: raise Interrupted if a signal arrived (inside critical(): not yet)."""
    if _received is not None and not _critical:
        raise Interrupted(_received, str(_stage))


@contextmanager
def critical() -> Iterator[None]:
    """A step that must not stop half way: checkpoints inside it wait; a signal that arrived
    during it stops the command at its end."""
    global _critical
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
    checkpoint()


@contextmanager
def child_group(pgid: int) -> Iterator[None]:
    """Stop the process group pgid (a helper this command waits for) on a signal; already
    arrived, now."""
    _children.add(pgid)
    try:
        if _received is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        yield
    finally:
        _children.discard(pgid)
