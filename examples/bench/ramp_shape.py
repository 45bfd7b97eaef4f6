"""The shape of our 32-stream run (issues 16/21): how many engine steps the ramp-up (until every
stream decodes), the steady part and the tail (after the first stream ended) take, and where
time to first token goes, from the engine's own ``cortexstream.step`` trace records.

    CORTEXSTREAM_CACHE=~/.cache/cortexstream $CORTEXSTREAM_CACHE/venv/bin/python \\
        examples/bench/ramp_shape.py --model smollm2-q4_k_m --threads 2 --rounds 3

The streams are the side-by-side row's (``ours.open_engine``, ``Workload.stream_prompts``,
``streams.measure_streams``: 32 client threads start together, 128 tokens each), so mean TTFT
and aggregate are that row's numbers for our side. They are wall-clock numbers and follow the
machine's load; the step counts and the engine thread's CPU time do not: ``ttft_engine_cpu_ms``
is, averaged over the streams, the engine thread's CPU time from the run's first step to the end
of the step that sampled the stream's first token. One JSON line per round.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import bench_models
from mixed_load import OurSteps
from ours import open_engine, run_one_stream
from streams import measure_streams
from workload import Workload

STREAMS = 32
TIMEOUT_S = 600.0


def shape(steps: list[dict[str, int]]) -> dict[str, Any]:
    """Ramp-up, steady and tail steps of a run's step records, and the engine CPU time to each
    stream's first token (a stream decoding from step i + 1 sampled its first token in step i;
    nobody ends during the ramp-up)."""
    full = [i for i, step in enumerate(steps) if step["decodes"] == STREAMS]
    cpu_ms, first_token_cpu_ms = 0.0, []
    for step, after in zip(steps, steps[1:]):
        cpu_ms += step["cpu_us"] / 1000
        first_token_cpu_ms += [cpu_ms] * max(0, after["decodes"] - step["decodes"])
    return {
        "steps": len(steps),
        "ramp_steps": full[0] if full else len(steps),
        "steady_steps": len(full),
        "tail_steps": len(steps) - 1 - full[-1] if full else 0,
        "steps_with_prompt_tokens": sum(1 for step in steps if step["prompt_tokens"] > 0),
        "engine_cpu_ms": sum(step["cpu_us"] for step in steps) / 1000,
        "ttft_engine_cpu_ms": statistics.fmean(first_token_cpu_ms) if first_token_cpu_ms else None,
        "ramp": [[step["decodes"], step["prompt_tokens"], step["token_budget"]]
                 for step in steps[: (full[0] + 1 if full else len(steps))]],
    }


def no_peer() -> Path:
    raise FileNotFoundError("this script does not build the peer: make the requantized model with "
                            "side_by_side.py first, or pass its path")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2",
                        help="a GGUF path or a model name (a requantized one must exist already)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    work = Workload.create(str(bench_models.resolve(args.model, no_peer)), args.threads, False)
    with open_engine(work) as engine:
        engine.generate("Warm up.", max_tokens=4)
        for round_index in range(args.rounds):
            prompts = work.stream_prompts(STREAMS, 100 + round_index)
            with OurSteps() as costs:
                streams = measure_streams(prompts, run_one_stream(engine, work), TIMEOUT_S)
            print(json.dumps({**streams, **shape(costs.steps)}), flush=True)


if __name__ == "__main__":
    main()
