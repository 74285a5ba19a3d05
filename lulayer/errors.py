"""The one error family: every expected failure is a LulayerError.

Each carries a message that says what is wrong and an optional hint that says
what to do; the CLI prints them as one line and exits non-zero.
"""

from __future__ import annotations


class LulayerError(Exception):
    """An expected failure with a message a user can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self) -> tuple[type[LulayerError], tuple[str, str | None]]:
        # Pickled across a fork (run.run_in_child): keep the hint.
        return type(self), (self.message, self.hint)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class SysrootError(LulayerError):
    """The sysroot, its deployments or its booted marker are not usable."""


class ResolveError(LulayerError):
    """The requested packages cannot be resolved or fetched."""


class ComposeError(LulayerError):
    """The new tree could not be composed or committed."""


class LiveApplyError(LulayerError):
    """A live apply was refused or failed."""


class LiveRefusedError(LiveApplyError):
    """A live apply was refused before anything was changed: it needs a reboot (the running
    kernel's modules) or --allow-replacement."""


class LockBusyError(LulayerError):
    """Another operation holds the sysroot lock."""


class CommandError(LulayerError):
    """An external command failed."""


class Interrupted(LulayerError):
    """SIGINT, SIGTERM or SIGHUP stopped the command at a safe point (lulayer/signals.py); the
    message says what state things are in. The exit code is 128+N, as a shell reports a signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self) -> tuple[type[Interrupted], tuple[int, str]]:  # type: ignore[override]
        return type(self), (self.signum, self.message)
