"""A one-line-per-step progress display on stderr, so stdout stays clean for results.

The harness runs our side in a child process; the child continues the parent's count (its
``done`` and ``started_at``), so the display reads as one sequence of steps.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``[step/total elapsed] what`` to stderr as each measurement starts."""

    def __init__(self, total: int, done: int = 0, started_at: float | None = None) -> None:
        self.total = total
        self.done = done
        self.started_at = time.time() if started_at is None else started_at

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.time() - self.started_at
        print(f"[{self.done:2d}/{self.total} {elapsed:6.1f}s] {what}", file=sys.stderr, flush=True)
