"""Fault points for the tests: stop or kill lulayer at a named step.

Only the test suite sets LULAYER_TEST_FAULT; unset, fault() does nothing. With
LULAYER_TEST_FAULT_SIGNAL (a name: INT, TERM, HUP) a fault point that kills sends
that signal instead of SIGKILL, as a person or systemd would.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "LULAYER_TEST_FAULT"
FAULT_SIGNAL_ENV = "LULAYER_TEST_FAULT_SIGNAL"


def fault(step: str, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ourselves sig when LULAYER_TEST_FAULT names step."""
    if os.environ.get(FAULT_ENV) == step:
        name = os.environ.get(FAULT_SIGNAL_ENV)
        if name and sig == signal.SIGKILL:
            sig = signal.Signals[f"SIG{name}"]
        os.kill(os.getpid(), sig)
