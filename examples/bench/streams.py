"""Concurrent streams, measured the same way for both sides: N client threads start together,
each sends one request and notes when its first token arrives and when it finishes."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamTiming:
    """One stream as its client saw it, in perf_counter seconds."""

    submitted: float
    first_token: float
    finished: float
    tokens: int


# Sends one prompt, blocks until it finishes, and reports what the client saw.
RunOne = Callable[[str], StreamTiming]


def measure_streams(prompts: list[str], run_one: RunOne, timeout_s: float) -> dict[str, float]:
    """Aggregate decode tok/s (all generated tokens over the wall time from the first submit
    to the last finish) and mean time to first token over concurrent streams, one per prompt."""
    start_together = threading.Barrier(len(prompts))

    def client(prompt: str) -> StreamTiming:
        start_together.wait(timeout=timeout_s)
        return run_one(prompt)

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        futures = [pool.submit(client, prompt) for prompt in prompts]
        deadline = time.monotonic() + timeout_s
        timings = [future.result(timeout=max(0.0, deadline - time.monotonic())) for future in futures]
    wall = max(t.finished for t in timings) - min(t.submitted for t in timings)
    return {
        "streams": len(prompts),
        "tokens": sum(t.tokens for t in timings),
        "wall_s": wall,
        "aggregate_tok_s": sum(t.tokens for t in timings) / wall,
        "mean_ttft_s": statistics.fmean(t.first_token - t.submitted for t in timings),
    }
