"""examples/bench/ramp_shape.py reads a 32-stream run's shape off the engine's step records:
ramp-up, steady and tail steps, and each stream's engine CPU time to its first token. No model:
made-up records."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "examples/bench"
sys.path.insert(0, str(BENCH))

import ramp_shape  # noqa: E402


def step(decodes: int, prompt_tokens: int, cpu_ms: int) -> dict[str, int]:
    return {"decodes": decodes, "prompt_tokens": prompt_tokens, "token_budget": 2048, "cpu_us": cpu_ms * 1000,
            "wall_us": cpu_ms * 2000}


def test_a_run_in_three_ramp_steps_and_a_staggered_tail() -> None:
    # 2 prompts first, 20 next, the last 10 after that; 3 steps of all 32; 2 streams end early.
    steps = [step(0, 36, 10), step(2, 360, 40), step(22, 180, 30), step(32, 0, 20), step(32, 0, 20),
             step(32, 0, 20), step(30, 0, 18), step(30, 0, 18)]
    shape = ramp_shape.shape(steps)
    assert (shape["steps"], shape["ramp_steps"], shape["steady_steps"], shape["tail_steps"]) == (8, 3, 3, 2)
    assert shape["steps_with_prompt_tokens"] == 3
    assert shape["engine_cpu_ms"] == 176
    # 2 streams at 10 ms, 20 at 50 ms, 10 at 80 ms.
    assert shape["ttft_engine_cpu_ms"] == (2 * 10 + 20 * 50 + 10 * 80) / 32
    assert shape["ramp"] == [[0, 36, 2048], [2, 360, 2048], [22, 180, 2048], [32, 0, 2048]]


def test_a_run_that_never_had_every_stream_decoding_is_all_ramp() -> None:
    shape = ramp_shape.shape([step(0, 18, 5), step(1, 18, 5), step(2, 0, 5)])
    assert (shape["ramp_steps"], shape["steady_steps"], shape["tail_steps"]) == (3, 0, 0)
    assert shape["ttft_engine_cpu_ms"] == 7.5
