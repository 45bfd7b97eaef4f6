"""A one-line-per-step progress display on stderr, so stdout stays clean for results.

The harness runs our side in a child process; the child continues the parent's count (its
``done`` and ``started_at``), so the display reads as one sequence of steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


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

    def run_child(self, script: Path, work: dict[str, Any], steps: int, timeout_s: float) -> Any:
        """Runs ``script`` (whose main reads :meth:`in_child`) with this count, waits up to
        ``timeout_s``, advances the count by its ``steps`` and returns the JSON it printed."""
        argv = [sys.executable, str(script), json.dumps(work), str(self.done), str(self.total), str(self.started_at)]
        completed = subprocess.run(argv, stdout=subprocess.PIPE, check=True, timeout=timeout_s, text=True)
        self.done += steps
        return json.loads(completed.stdout)

    @classmethod
    def in_child(cls, argv: list[str]) -> tuple[dict[str, Any], "Progress"]:
        """In a child started by :meth:`run_child`: its workload (as JSON) and the parent's count."""
        return json.loads(argv[1]), cls(total=int(argv[3]), done=int(argv[2]), started_at=float(argv[4]))
