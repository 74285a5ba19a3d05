"""Progress of a long step (downloads, the live apply), as the core reports it to its caller.

The core says what is done; the caller decides how to show it (cli.py draws a bar on a
terminal and prints plain lines elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressReport:
    task: str  # what is under way: "Downloading packages", "Applying live"
    done: int  # items finished
    total: int  # items in all
    done_bytes: int = 0
    total_bytes: int = 0  # 0 when not known in advance
    item: str = ""  # the item under way (a package, a file)

    @property
    def finished(self) -> bool:
        return self.done >= self.total


Progress = Callable[[ProgressReport], None]
