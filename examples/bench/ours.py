"""Our side of the benchmark, run by side_by_side.py in a child process of its own so that its
peak RSS is cortexstream's alone. Prints one JSON object on stdout.

Usage: python ours.py WORKLOAD_JSON PROGRESS_DONE PROGRESS_TOTAL STARTED_AT
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import cortexstream

from machine import peak_rss_bytes
from progress import Progress
from streams import RunOne, StreamTiming, measure_streams
from workload import (
    CHAT_MESSAGES,
    DECODE_PROMPT,
    PREFILL_TEXT,
    STRUCTURED_SCHEMA,
    Workload,
    prefill_tag,
    raw_ttft_prompt,
    system_message,
)

GREEDY = {"temperature": 0.0, "ignore_eos": True}
STREAMS_TIMEOUT_S = 900.0


def decode_tok_s(engine: cortexstream.Engine, work: Workload) -> float:
    """Single-stream decode rate: tokens after the first over the time they took (the first
    token belongs to the prefill), median over the repeats."""
    rates = []
    for run in range(work.repeats):
        completion = engine.generate(f"{prefill_tag(run)}{DECODE_PROMPT}", max_tokens=work.decode_tokens, **GREEDY)
        rates.append((completion.usage.completion_tokens - 1) / (completion.timings.decode_ns / 1e9))
    return statistics.median(rates)


def prefill_tok_s(engine: cortexstream.Engine, work: Workload) -> float:
    """Prompt tokens per second of prefill for a ``prefill_tokens`` prompt, median over the repeats."""
    rates = []
    for run in range(work.repeats):
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


def ttft_s(engine: cortexstream.Engine, work: Workload, chat_template: bool, **constraint: Any) -> float:
    """Submit to first token as the caller sees it, median over the repeats: of a chat request,
    or for a model without a chat template of the same text as a raw prompt. Each repeat uses a
    distinct system message so the prefix cache cannot help. ``constraint`` (e.g. `json_schema`)
    goes with every request."""
    return statistics.median(first_token_s(engine, run, chat_template, **constraint) for run in range(work.repeats))


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


def constrained_runs(
    engine: cortexstream.Engine, work: Workload, chat_template: bool, progress: Progress
) -> dict[str, Any]:
    """The JSON-schema rows: TTFT of the first request of a new schema (it compiles the schema),
    TTFT once the schema is cached, and the most concurrent streams, each constrained."""
    schema = {"json_schema": STRUCTURED_SCHEMA}
    progress.step(f"ours: JSON-schema TTFT, first request then x{work.repeats} cached")
    # Repeat numbers past the plain TTFT runs: new system messages, no prefix-cache help.
    first = first_token_s(engine, work.repeats, chat_template, **schema)
    cached = statistics.median(
        first_token_s(engine, work.repeats + 1 + run, chat_template, **schema) for run in range(work.repeats)
    )
    count = work.max_streams
    progress.step(f"ours: {count} JSON-schema-constrained streams x {work.stream_tokens} tokens")
    streams = measure_streams(work.structured_prompts(count), run_one_stream(engine, work, **schema), STREAMS_TIMEOUT_S)
    work.check_full_length(streams, count)
    return {"first_ttft_s": first, "ttft_s": cached, "streams": {str(count): streams}}


def open_engine(work: Any, **settings: Any) -> "cortexstream.Engine":
    """The engine every bench row measures: the workload's model, threads, KV cache size and
    running slots, no embedding model; `settings` adds engine settings (e.g. `kv_cache_type`)."""
    return cortexstream.Engine(work.model, embedding_model=False, threads=work.threads,
                               kv_cache_tokens=work.kv_tokens, max_running=work.max_streams, **settings)


def step_count(work: Workload) -> int:
    """How many progress steps :func:`main` shows."""
    return 6 + len(work.stream_counts)


def main() -> None:
    work_json, progress = Progress.in_child(sys.argv)
    work = Workload.from_json(work_json)
    # The kernels the engine picks on this CPU, for the report beside the CPU's flags.
    result: dict[str, Any] = {"kernels": cortexstream.kernel_info()}

    progress.step("ours: load model, warm up")
    with open_engine(work) as engine:
        engine.generate(DECODE_PROMPT, max_tokens=4, **GREEDY)
        progress.step(f"ours: single-stream decode, {work.decode_tokens} tokens x{work.repeats}")
        result["decode_tok_s"] = decode_tok_s(engine, work)
        progress.step(f"ours: prefill, {work.prefill_tokens}-token prompt x{work.repeats}")
        result["prefill_tok_s"] = prefill_tok_s(engine, work)
        chat_template = has_chat_template(engine)
        result["ttft_kind"] = "chat" if chat_template else "raw"
        progress.step(f"ours: {result['ttft_kind']} TTFT x{work.repeats}")
        result["ttft_s"] = ttft_s(engine, work, chat_template)
        # The peer gets the very text we prefilled (with the first repeat's system message).
        result["ttft_prompt"] = engine.apply_chat_template(chat(0)) if chat_template else raw_ttft_prompt(0)
        result["ttft_prompt_tokens"] = len(engine.tokenize(result["ttft_prompt"]))
        result["streams"] = {}
        for count in work.stream_counts:
            progress.step(f"ours: {count} concurrent streams x {work.stream_tokens} tokens")
            result["streams"][str(count)] = measure_streams(
                work.stream_prompts(count), run_one_stream(engine, work), STREAMS_TIMEOUT_S
            )
        result["constrained"] = constrained_runs(engine, work, chat_template, progress)
        result["peak_rss_bytes"] = peak_rss_bytes()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
