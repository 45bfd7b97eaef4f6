"""How much does streaming through Python cost per token, compared with the core alone?

Two numbers:

1. Live streaming: the mean gap between consecutive token chunks as a Python consumer sees
   them, against the per-token time the core measured for the same request
   (``Timings.per_token_ns``). The difference is what the binding adds on the hot path.
2. Delivery cost: the time to hand one already-generated chunk to Python (sync iterator and
   ``async for``), i.e. the pure binding overhead with no model time mixed in.

Usage: python examples/bench/python_overhead.py [--tokens 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import cortexstream

from machine import commit_hash, cpu_description, footer
from rounds import load_average

PROMPT = "Write a long story about a lighthouse keeper."


def live_gap_ns(engine: cortexstream.Engine, tokens: int) -> tuple[float, float]:
    """(mean gap between token chunks seen by Python, core per-token time), in ns."""
    arrivals = []
    stream = engine.stream(PROMPT, max_tokens=tokens, temperature=0.0, ignore_eos=True)
    for chunk in stream:
        if chunk.token_id is not None:
            arrivals.append(time.perf_counter_ns())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return statistics.fmean(gaps), float(stream.completion.timings.per_token_ns)


def buffered_stream(engine: cortexstream.Engine, tokens: int) -> cortexstream.Stream:
    """A stream whose request has finished, so reading it involves no model time."""
    finished_before = engine.metrics()["requests_finished"]
    stream = engine.stream(PROMPT, max_tokens=tokens, temperature=0.0, ignore_eos=True)
    while engine.metrics()["requests_finished"] == finished_before:
        time.sleep(0.005)
    return stream


def delivery_ns_sync(engine: cortexstream.Engine, tokens: int) -> float:
    stream = buffered_stream(engine, tokens)
    start = time.perf_counter_ns()
    count = sum(1 for _ in stream)
    return (time.perf_counter_ns() - start) / count


def delivery_ns_async(engine: cortexstream.Engine, tokens: int) -> float:
    stream = buffered_stream(engine, tokens)

    async def drain() -> float:
        start = time.perf_counter_ns()
        count = 0
        async for _ in cortexstream.AsyncStream(stream):
            count += 1
        return (time.perf_counter_ns() - start) / count

    return asyncio.run(drain())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    load_start = load_average()

    with cortexstream.Engine(embedding_model=False) as engine:
        engine.generate(PROMPT, max_tokens=8)  # warm up
        live = [live_gap_ns(engine, args.tokens) for _ in range(args.runs)]
        python_gap = statistics.median(gap for gap, _ in live)
        core_per_token = statistics.median(core for _, core in live)
        sync_cost = statistics.median(delivery_ns_sync(engine, args.tokens) for _ in range(args.runs))
        async_cost = statistics.median(delivery_ns_async(engine, args.tokens) for _ in range(args.runs))

    print(f"tokens per request             {args.tokens} (median of {args.runs} runs)")
    print(f"core per-token time            {core_per_token / 1e3:9.1f} us")
    print(f"Python consumer per-token gap  {python_gap / 1e3:9.1f} us")
    print(f"streaming overhead             {(python_gap - core_per_token) / 1e3:9.1f} us/token "
          f"({(python_gap / core_per_token - 1) * 100:+.2f}%)")
    print(f"delivery of a buffered chunk   {sync_cost / 1e3:9.2f} us (for loop)")
    print(f"                               {async_cost / 1e3:9.2f} us (async for)")
    print(footer(cpu_description(), cortexstream.kernel_info(), "the engine's default", load_start, load_average(),
                 commit_hash()))


if __name__ == "__main__":
    main()
