"""A one-line-per-step progress display on stderr, so stdout stays clean for results."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``[step/total elapsed] what`` to stderr as each measurement starts; a suite that
    opens more work as it goes adds to ``total``."""

    def __init__(self, total: int = 0) -> None:
        self.total = total
        self.done = 0
        self.started_at = time.time()

    def step(self, what: str) -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        elapsed = time.time() - self.started_at
        print(f"[{self.done:2d}/{self.total} {elapsed:6.1f}s] {what}", file=sys.stderr, flush=True)
