"""Issue 21's rows (``side_by_side.py --suite issue21``): single-stream decode at context
positions 128, 2k and 8k, prefill of a 4k-token prompt, and aggregate decode at 64 and 128
concurrent streams, ours and llama.cpp's on the same GGUF and threads, in one run.

Our side runs in a child process (``python long_context.py WORKLOAD_JSON ...``, as ours.py) so
its numbers are the engine's alone. The peer: ``llama-bench -p 0 -n N -d DEPTH`` for the decode
rows (it prefills DEPTH tokens, then times N decoded tokens), ``llama-bench -p 4096 -n 0`` for
prefill, and one ``llama-server --parallel 128 -c 128x256`` for the streams.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from progress import Progress
from streams import measure_streams
from workload import Workload, prefill_tag

HERE = Path(__file__).resolve().parent
GREEDY = {"temperature": 0.0, "ignore_eos": True}
STREAMS_TIMEOUT_S = 1800.0
OURS_TIMEOUT_S = 3600
PEER_BENCH_TIMEOUT_S = 3600

# Tokenizes to well past 8k tokens: distinct numbered chapters, so no two stretches repeat.
LONG_TEXT = " ".join(
    f"Chapter {n}: the keeper climbed the {n * 7} steps of the lighthouse, trimmed the wick, "
    f"polished the lens and wrote the weather in the log before ship {n * 13 % 997} came in."
    for n in range(1, 420)
)


@dataclass(frozen=True)
class LongWorkload:
    """Sizes of the issue-21 rows; ``quick`` shrinks them to a smoke run of seconds."""

    model: str
    threads: int
    depths: tuple[int, ...]
    depth_decode_tokens: int
    prefill_tokens: int
    stream_counts: tuple[int, ...]
    stream_tokens: int
    ctx_per_slot: int
    repeats: int

    @classmethod
    def create(cls, model: str, threads: int, quick: bool, repeats: int | None = None) -> LongWorkload:
        if quick:
            return cls(model, threads, (16, 64), 4, 64, (4, 8), 4, 64, repeats or 1)
        # 8000, not 8192: SmolLM2's context is 8192 positions and the decoded tokens must fit.
        return cls(model, threads, (128, 2048, 8000), 32, 4096, (64, 128), 64, 256, repeats or 2)

    @property
    def max_streams(self) -> int:
        return max(self.stream_counts)

    @property
    def kv_tokens(self) -> int:
        """KV capacity of each side: room for every stream's slot, and for the deepest context."""
        deepest = max(self.depths) + self.depth_decode_tokens + 16
        return max(self.max_streams * self.ctx_per_slot, deepest)

    def stream_prompts(self, count: int) -> list[str]:
        """The standard suite's distinct stream prompts, tagged apart from other runs."""
        base = Workload(self.model, self.threads, 0, 0, 1, (count,), self.stream_tokens, self.ctx_per_slot)
        return [f"[{count}] {prompt}" for prompt in base.stream_prompts(count)]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LongWorkload:
        tuples = {key: tuple(data[key]) for key in ("depths", "stream_counts")}
        return cls(**{**data, **tuples})


def step_count(work: LongWorkload) -> int:
    """Progress steps of one side (both show as many)."""
    return 2 + len(work.depths) + len(work.stream_counts)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------- our side (child process)


def long_prompt(engine: Any, run: int, tokens: int) -> list[int]:
    """Exactly ``tokens`` prompt ids, led by a tag distinct per run (no prefix-cache reuse)."""
    ids = engine.tokenize(prefill_tag(run) + LONG_TEXT)[:tokens]
    if len(ids) != tokens:
        raise RuntimeError(f"the long text tokenizes to {len(ids)} tokens, fewer than {tokens}")
    return ids


def decode_at_depth(engine: Any, work: LongWorkload, depth: int, first_run: int) -> float:
    """One stream's decode rate at context position ``depth``: a ``depth``-token prompt, then
    ``depth_decode_tokens`` tokens after the first (which belongs to the prefill), median."""
    rates = []
    for run in range(first_run, first_run + work.repeats):
        ids = long_prompt(engine, run, depth)
        completion = engine.generate(ids, max_tokens=work.depth_decode_tokens + 1, **GREEDY)
        rates.append((completion.usage.completion_tokens - 1) / (completion.timings.decode_ns / 1e9))
    return statistics.median(rates)


def long_prefill(engine: Any, work: LongWorkload, first_run: int) -> float:
    rates = []
    for run in range(first_run, first_run + work.repeats):
        ids = long_prompt(engine, run, work.prefill_tokens)
        completion = engine.generate(ids, max_tokens=1, **GREEDY)
        if completion.usage.cached_prompt_tokens:
            raise RuntimeError("a prefill run reused a cached prefix; its rate would not be a prefill's")
        rates.append(len(ids) / (completion.timings.prefill_ns / 1e9))
    return statistics.median(rates)


def run_ours_child(work: LongWorkload, progress: Progress) -> dict[str, Any]:
    import cortexstream

    from machine import peak_rss_bytes
    from ours import open_engine, run_one_stream

    result: dict[str, Any] = {"kernels": cortexstream.kernel_info(), "load_average_start": load_average()}
    progress.step("ours: load model, warm up")
    with open_engine(work) as engine:
        engine.generate("Once upon a time", max_tokens=4, **GREEDY)
        result["decode_at_depth_tok_s"] = {}
        for index, depth in enumerate(work.depths):
            progress.step(f"ours: decode at position {depth}, {work.depth_decode_tokens} tokens x{work.repeats}")
            rate = decode_at_depth(engine, work, depth, first_run=100 * (index + 1))
            result["decode_at_depth_tok_s"][str(depth)] = rate
        progress.step(f"ours: prefill, {work.prefill_tokens}-token prompt x{work.repeats}")
        result["prefill_tok_s"] = long_prefill(engine, work, first_run=1000)
        result["streams"] = {}
        stream_work = Workload(work.model, work.threads, 0, 0, 1, work.stream_counts, work.stream_tokens, 0)
        for count in work.stream_counts:
            progress.step(f"ours: {count} concurrent streams x {work.stream_tokens} tokens")
            result["streams"][str(count)] = measure_streams(
                work.stream_prompts(count), run_one_stream(engine, stream_work), STREAMS_TIMEOUT_S
            )
        result["peak_rss_bytes"] = peak_rss_bytes()
    result["load_average_end"] = load_average()
    return result


def run_ours(work: LongWorkload, progress: Progress) -> dict[str, Any]:
    """Our side in a child process, so its numbers (and RSS) are the engine's alone."""
    return progress.run_child(HERE / "long_context.py", work.to_json(), step_count(work), OURS_TIMEOUT_S)


# ---------------------------------------------------------------- the peer


def llama_bench(bin_dir: Path, work: LongWorkload, repack: bool, *args: str) -> list[dict[str, Any]]:
    command = [
        str(bin_dir / "llama-bench"),
        "-m",
        work.model,
        "-t",
        str(work.threads),
        "-r",
        str(work.repeats),
        "--repack",
        "1" if repack else "0",
        "-o",
        "json",
        *args,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=PEER_BENCH_TIMEOUT_S).stdout
    return json.loads(output)


def peer_bench(bin_dir: Path, work: LongWorkload, repack: bool, progress: Progress) -> dict[str, Any]:
    """llama-bench's decode rate at each depth and its prefill rate, with one repacking setting."""
    depths = ",".join(map(str, work.depths))
    progress.step(f"llama.cpp: llama-bench -n {work.depth_decode_tokens} -d {depths}, repack {'on' if repack else 'off'}")
    tests = llama_bench(bin_dir, work, repack, "-p", "0", "-n", str(work.depth_decode_tokens), "-d", depths)
    rates: dict[str, Any] = {"decode_at_depth_tok_s": {str(t["n_depth"]): t["avg_ts"] for t in tests}}
    progress.step(f"llama.cpp: llama-bench -p {work.prefill_tokens}, repack {'on' if repack else 'off'}")
    tests = llama_bench(bin_dir, work, repack, "-p", str(work.prefill_tokens), "-n", "0")
    rates["prefill_tok_s"] = tests[0]["avg_ts"]
    return rates


def best_of(runs: dict[str, dict[str, Any]], read) -> tuple[float, str]:
    """The faster repacking setting's rate of one row, and which setting that was."""
    setting = max(runs, key=lambda s: read(runs[s]))
    return read(runs[setting]), setting


def run_peer(bin_dir: Path, work: LongWorkload, settings: list[bool], progress: Progress) -> dict[str, Any]:
    import peer

    runs = {("on" if repack else "off"): peer_bench(bin_dir, work, repack, progress) for repack in settings}
    result: dict[str, Any] = {"bench_by_repack": runs, "decode_at_depth_tok_s": {}, "repack": {}}
    for depth in map(str, work.depths):
        rate, setting = best_of(runs, lambda r: r["decode_at_depth_tok_s"][depth])
        result["decode_at_depth_tok_s"][depth], result["repack"][f"decode@{depth}"] = rate, setting
    result["prefill_tok_s"], result["repack"]["prefill"] = best_of(runs, lambda r: r["prefill_tok_s"])
    repack = settings[-1]
    result["server_repack"] = "on" if repack else "off"
    server_work = Workload(work.model, work.threads, 0, 0, 1, (work.max_streams,), work.stream_tokens, work.ctx_per_slot)
    progress.step(f"llama.cpp: start llama-server --parallel {work.max_streams} -c {server_work.kv_tokens}")
    with peer.LlamaServer(bin_dir, server_work, repack) as server:
        result["streams"] = {}
        for count in work.stream_counts:
            progress.step(f"llama.cpp: {count} concurrent streams x {work.stream_tokens} tokens")
            result["streams"][str(count)] = measure_streams(
                work.stream_prompts(count),
                partial(server.stream_completion, n_predict=work.stream_tokens),
                STREAMS_TIMEOUT_S,
            )
        result["peak_rss_bytes"] = server.peak_rss_bytes()
    return result


def peer_step_count(work: LongWorkload, settings: list[bool]) -> int:
    return 2 * len(settings) + 1 + len(work.stream_counts)


# ---------------------------------------------------------------- the table


def table_rows(work: LongWorkload) -> list[tuple[str, Any, str]]:
    """(label, reader of one side's results, format) per row."""
    rows: list[tuple[str, Any, str]] = []
    for depth in work.depths:
        rows.append(
            (
                f"decode tok/s at position {depth} (1 stream, {work.depth_decode_tokens} tokens)",
                lambda r, d=str(depth): r["decode_at_depth_tok_s"][d],
                "{:.1f}",
            )
        )
    rows.append((f"prefill tok/s ({work.prefill_tokens}-token prompt)", lambda r: r["prefill_tok_s"], "{:.1f}"))
    for count in work.stream_counts:
        rows.append(
            (
                f"aggregate decode tok/s, {count} streams x {work.stream_tokens} tokens",
                lambda r, c=str(count): r["streams"][c]["aggregate_tok_s"],
                "{:.1f}",
            )
        )
    rows.append(
        (
            f"mean TTFT s, {work.max_streams} streams",
            lambda r: r["streams"][str(work.max_streams)]["mean_ttft_s"],
            "{:.3f}",
        )
    )
    return rows


def main() -> None:
    """The child process of :func:`run_ours`."""
    work_json, progress = Progress.in_child(sys.argv)
    work = LongWorkload.from_json(work_json)
    json.dump(run_ours_child(work, progress), sys.stdout)


if __name__ == "__main__":
    main()
