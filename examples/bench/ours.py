"""Our side of the standard rows, run by side_by_side.py in a child process of its own (so that
its peak RSS is cortexstream's alone) that keeps the engine loaded and runs one measurement per
request (child.py), each in a given round.

Usage (by side_by_side.py): python ours.py --serve WORKLOAD_JSON
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import cortexstream

import child
from machine import peak_rss_bytes
from streams import RunOne, StreamTiming, measure_streams
from workload import (
    CHAT_MESSAGES,
    DECODE_PROMPT,
    PREFILL_TEXT,
    Workload,
    first_run,
    prefill_tag,
    raw_ttft_prompt,
    structured_schema,
    system_message,
)

GREEDY = {"temperature": 0.0, "ignore_eos": True}
STREAMS_TIMEOUT_S = 900.0


def decode_tok_s(engine: cortexstream.Engine, work: Workload, first: int = 0) -> float:
    """Single-stream decode rate: tokens after the first over the time they took (the first
    token belongs to the prefill), median over the repeats (runs ``first``, ``first + 1``, ...)."""
    rates = []
    for run in range(first, first + work.repeats):
        completion = engine.generate(f"{prefill_tag(run)}{DECODE_PROMPT}", max_tokens=work.decode_tokens, **GREEDY)
        rates.append((completion.usage.completion_tokens - 1) / (completion.timings.decode_ns / 1e9))
    return statistics.median(rates)


def prefill_tok_s(engine: cortexstream.Engine, work: Workload, first: int = 0) -> float:
    """Prompt tokens per second of prefill for a ``prefill_tokens`` prompt, median over the repeats."""
    rates = []
    for run in range(first, first + work.repeats):
        ids = engine.tokenize(prefill_tag(run) + PREFILL_TEXT)[: work.prefill_tokens]
        completion = engine.generate(ids, max_tokens=1, **GREEDY)
        if completion.usage.cached_prompt_tokens:
            raise RuntimeError("a prefill run reused a cached prefix; its rate would not be a prefill's")
        rates.append(len(ids) / (completion.timings.prefill_ns / 1e9))
    return statistics.median(rates)


def first_token_time(stream: cortexstream.Stream) -> float:
    for chunk in stream:
        if chunk.token_id is not None:
            return time.perf_counter()
    raise RuntimeError(f"stream ended without a token: {stream.completion and stream.completion.error}")


def chat(run: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_message(run)}, *CHAT_MESSAGES]


def has_chat_template(engine: cortexstream.Engine) -> bool:
    try:
        engine.apply_chat_template(chat(0))
    except cortexstream.ChatTemplateMissingError:
        return False
    return True


def ttft_s(engine: cortexstream.Engine, work: Workload, chat_template: bool, first: int = 0, **constraint: Any) -> float:
    """Submit to first token as the caller sees it, median over the repeats: of a chat request,
    or for a model without a chat template of the same text as a raw prompt. Each repeat uses a
    distinct system message so the prefix cache cannot help. ``constraint`` (e.g. `json_schema`)
    goes with every request."""
    runs = range(first, first + work.repeats)
    return statistics.median(first_token_s(engine, run, chat_template, **constraint) for run in runs)


def first_token_s(engine: cortexstream.Engine, run: int, chat_template: bool, **constraint: Any) -> float:
    """Submit to first token of the TTFT prompt of repeat ``run``."""
    start = time.perf_counter()
    if chat_template:
        stream = engine.stream_chat(chat(run), max_tokens=1, **GREEDY, **constraint)
    else:
        stream = engine.stream(raw_ttft_prompt(run), max_tokens=1, **GREEDY, **constraint)
    with stream:
        return first_token_time(stream) - start


def run_one_stream(engine: cortexstream.Engine, work: Workload, **constraint: Any) -> RunOne:
    def run(prompt: str) -> StreamTiming:
        submitted = time.perf_counter()
        stream = engine.stream(prompt, max_tokens=work.stream_tokens, **GREEDY, **constraint)
        first = first_token_time(stream)
        completion = stream.wait()
        return StreamTiming(submitted, first, time.perf_counter(), completion.usage.completion_tokens)

    return run


def constrained_runs(engine: cortexstream.Engine, work: Workload, chat_template: bool, round_index: int) -> dict[str, Any]:
    """The JSON-schema rows: TTFT of the first request of a new schema (it compiles the schema),
    TTFT once the schema is cached, and the most concurrent streams, each constrained."""
    schema = {"json_schema": structured_schema(round_index)}
    # Run numbers past the plain TTFT runs: new system messages, no prefix-cache help.
    first = first_run(round_index) + work.repeats
    first_ttft = first_token_s(engine, first, chat_template, **schema)
    cached = ttft_s(engine, work, chat_template, first + 1, **schema)
    count = work.max_streams
    prompts = work.structured_prompts(count, round_index)
    streams = measure_streams(prompts, run_one_stream(engine, work, **schema), STREAMS_TIMEOUT_S)
    work.check_full_length(streams, count)
    return {"first_ttft_s": first_ttft, "ttft_s": cached, "streams": {str(count): streams}}


def open_engine(work: Any, **settings: Any) -> "cortexstream.Engine":
    """The engine every bench row measures: the workload's model, threads, KV cache size and
    running slots, no embedding model; `settings` adds engine settings (e.g. `kv_cache_type`)."""
    return cortexstream.Engine(work.model, embedding_model=False, threads=work.threads,
                               kv_cache_tokens=work.kv_tokens, max_running=work.max_streams, **settings)


def ttft_prompt(engine: cortexstream.Engine, chat_template: bool) -> dict[str, Any]:
    """The TTFT prompt as text, for the peer: the very text we prefill in a round's first TTFT
    run (its system message aside), and its size."""
    text = engine.apply_chat_template(chat(0)) if chat_template else raw_ttft_prompt(0)
    return {"ttft_kind": "chat" if chat_template else "raw", "ttft_prompt": text,
            "ttft_prompt_tokens": len(engine.tokenize(text))}


def standard_ops(engine: cortexstream.Engine, work: Workload) -> dict[str, child.Op]:
    """The standard rows' measurements, by name, each for one round (``round``, 0-based)."""
    chat_template = has_chat_template(engine)

    def single_stream(round: int) -> dict[str, Any]:
        first = first_run(round)
        return {"decode_tok_s": decode_tok_s(engine, work, first), "prefill_tok_s": prefill_tok_s(engine, work, first)}

    def streams(round: int, count: int) -> dict[str, Any]:
        prompts = work.stream_prompts(count, round)
        return {"streams": {str(count): measure_streams(prompts, run_one_stream(engine, work), STREAMS_TIMEOUT_S)}}

    return {
        "ttft_prompt": lambda: ttft_prompt(engine, chat_template),
        "single_stream": single_stream,
        "ttft": lambda round: {"ttft_s": ttft_s(engine, work, chat_template, first_run(round))},
        "streams": streams,
        "constrained": lambda round: {"constrained": constrained_runs(engine, work, chat_template, round)},
        "peak_rss": lambda round: {"peak_rss_bytes": peak_rss_bytes()},
    }


def main() -> None:
    if not child.is_serve_call(sys.argv):
        raise SystemExit("ours.py is run by side_by_side.py (python ours.py --serve WORKLOAD_JSON)")
    replies = child.protocol_stream()
    work = Workload.from_json(child.workload_of(sys.argv))
    with open_engine(work) as engine:
        engine.generate(DECODE_PROMPT, max_tokens=4, **GREEDY)  # warm up
        # The kernels the engine picks on this CPU, for the report beside the CPU's flags.
        child.serve(standard_ops(engine, work), {"kernels": cortexstream.kernel_info()}, replies)


if __name__ == "__main__":
    main()
