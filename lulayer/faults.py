"""Fault points for the tests: stop or kill lulayer at a named step.

Only the test suite sets LULAYER_TEST_FAULT; unset, fault() does nothing.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "LULAYER_TEST_FAULT"


def fault(step: str, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ourselves sig when LULAYER_TEST_FAULT names step."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), sig)
