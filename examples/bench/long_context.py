"""Issue 21's rows (``side_by_side.py --suite issue21``): single-stream decode at context
positions 128, 2k and 8k, prefill of a 4k-token prompt, and aggregate decode at 64 and 128
concurrent streams, ours and llama.cpp's on the same GGUF and threads, in one run.

Our side runs in a child process that keeps its engine loaded (``python long_context.py --serve
WORKLOAD_JSON``, child.py) so its numbers are the engine's alone, one measurement per request,
alternating with the peer's (rounds.py). The peer: ``llama-bench -p 0 -n N -d DEPTH`` for the decode
rows (it prefills DEPTH tokens, then times N decoded tokens), ``llama-bench -p 4096 -n 0`` for
prefill, and one ``llama-server --parallel 128 -c 128x256`` for the streams.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import child
import peer
from child import OursChild
from machine import peak_rss_bytes
from rounds import Measurement, Row, Target
from streams import measure_streams
from workload import Workload, first_run, prefill_tag

HERE = Path(__file__).resolve().parent
GREEDY = {"temperature": 0.0, "ignore_eos": True}
STREAMS_TIMEOUT_S = 1800.0
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

    def stream_prompts(self, count: int, round_index: int = 0) -> list[str]:
        """The standard suite's distinct stream prompts, tagged apart from other runs."""
        return [f"[{count}] {prompt}" for prompt in self.stream_workload().stream_prompts(count, round_index)]

    def stream_workload(self) -> Workload:
        """The standard workload of the streams rows (llama-server's slots and context)."""
        return Workload(self.model, self.threads, 0, 0, 1, (self.max_streams,), self.stream_tokens, self.ctx_per_slot)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LongWorkload:
        tuples = {key: tuple(data[key]) for key in ("depths", "stream_counts")}
        return cls(**{**data, **tuples})


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


def long_ops(engine: Any, work: LongWorkload) -> dict[str, Any]:
    """Our measurements of these rows, by name, each for one round (``round``, 0-based). Run
    numbers differ per depth, row and round, so no run reuses another's cached prefix."""
    from ours import run_one_stream

    def decode(round: int, depth: int) -> dict[str, Any]:
        rate = decode_at_depth(engine, work, depth, first_run=first_run(round) + depth)
        return {"decode_at_depth_tok_s": {str(depth): rate}}

    def streams(round: int, count: int) -> dict[str, Any]:
        stream_work = work.stream_workload()
        timing = measure_streams(work.stream_prompts(count, round), run_one_stream(engine, stream_work), STREAMS_TIMEOUT_S)
        return {"streams": {str(count): timing}}

    return {
        "decode_at_depth": decode,
        "prefill": lambda round: {"prefill_tok_s": long_prefill(engine, work, first_run=first_run(round) + 99_000)},
        "streams": streams,
        "peak_rss": lambda round: {"peak_rss_bytes": peak_rss_bytes()},
    }


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


class PeerLong:
    """llama.cpp's side of these rows: llama-bench per row (with each repacking setting, the
    faster kept), and one llama-server with a slot per stream for the streams rows."""

    def __init__(self, bin_dir: Path, work: LongWorkload, settings: list[bool]) -> None:
        self.bin_dir, self.work, self.settings = bin_dir, work, settings
        self.server = peer.LlamaServer(bin_dir, work.stream_workload(), settings[-1])

    def __enter__(self) -> PeerLong:
        self.server.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.__exit__(*exc_info)

    def best_rate(self, *args: str) -> tuple[float, str, dict[str, float]]:
        """llama-bench's rate for ``args`` with each repacking setting: the faster, its setting,
        and every setting's rate."""
        rates = {("on" if repack else "off"): llama_bench(self.bin_dir, self.work, repack, *args)[0]["avg_ts"]
                 for repack in self.settings}
        setting = max(rates, key=rates.__getitem__)
        return rates[setting], setting, rates

    def decode_at_depth(self, round_index: int, depth: int) -> dict[str, Any]:
        rate, setting, rates = self.best_rate("-p", "0", "-n", str(self.work.depth_decode_tokens), "-d", str(depth))
        key = f"decode@{depth}"
        return {"decode_at_depth_tok_s": {str(depth): rate}, "repack": {key: setting}, "bench_by_repack": {key: rates}}

    def prefill(self, round_index: int) -> dict[str, Any]:
        rate, setting, rates = self.best_rate("-p", str(self.work.prefill_tokens), "-n", "0")
        return {"prefill_tok_s": rate, "repack": {"prefill": setting}, "bench_by_repack": {"prefill": rates}}

    def streams(self, round_index: int, count: int) -> dict[str, Any]:
        prompts = self.work.stream_prompts(count, round_index)
        run_one = partial(self.server.stream_completion, n_predict=self.work.stream_tokens)
        return {"streams": {str(count): measure_streams(prompts, run_one, STREAMS_TIMEOUT_S)}}

    def peak_rss(self, round_index: int) -> dict[str, Any]:
        return {"peak_rss_bytes": self.server.peak_rss_bytes(), "server_repack": "on" if self.settings[-1] else "off"}


def measurements(work: LongWorkload, ours: OursChild, theirs: PeerLong | None) -> list[Measurement]:
    """Each row's measurement on both sides."""
    listed = [
        Measurement(
            f"decode at position {depth}, {work.depth_decode_tokens} tokens x{work.repeats}",
            ours=partial(call_in_round, ours, "decode_at_depth", depth=depth),
            peer=theirs and partial(theirs.decode_at_depth, depth=depth),
        )
        for depth in work.depths
    ]
    listed.append(Measurement(f"prefill, {work.prefill_tokens}-token prompt x{work.repeats}",
                              ours=partial(call_in_round, ours, "prefill"), peer=theirs and theirs.prefill))
    listed += [
        Measurement(
            f"{count} concurrent streams x {work.stream_tokens} tokens",
            ours=partial(call_in_round, ours, "streams", count=count),
            peer=theirs and partial(theirs.streams, count=count),
        )
        for count in work.stream_counts
    ]
    listed.append(Measurement("peak RSS", ours=partial(call_in_round, ours, "peak_rss"), peer=theirs and theirs.peak_rss))
    return listed


def call_in_round(ours: OursChild, op: str, round_index: int, **args: Any) -> dict[str, Any]:
    return ours.call(op, round=round_index, **args)


# ---------------------------------------------------------------- the table


def table_rows(work: LongWorkload, target: Target | None) -> list[Row]:
    """The rows of this suite; ``target`` on each decode row and the prefill row."""
    rows = [
        Row(
            f"decode tok/s at position {depth} (1 stream, {work.depth_decode_tokens} tokens)",
            lambda r, d=str(depth): r["decode_at_depth_tok_s"][d],
            "{:.1f}",
            target,
        )
        for depth in work.depths
    ]
    rows.append(Row(f"prefill tok/s ({work.prefill_tokens}-token prompt)", lambda r: r["prefill_tok_s"], "{:.1f}", target))
    rows += [
        Row(
            f"aggregate decode tok/s, {count} streams x {work.stream_tokens} tokens",
            lambda r, c=str(count): r["streams"][c]["aggregate_tok_s"],
            "{:.1f}",
        )
        for count in work.stream_counts
    ]
    rows.append(Row(f"mean TTFT s, {work.max_streams} streams",
                    lambda r: r["streams"][str(work.max_streams)]["mean_ttft_s"], "{:.3f}"))
    return rows


def main() -> None:
    """The child process of :class:`child.OursChild`: our engine for these rows."""
    import cortexstream

    from ours import open_engine

    if not child.is_serve_call(sys.argv):
        raise SystemExit("long_context.py is run by side_by_side.py --suite issue21")
    replies = child.protocol_stream()
    work = LongWorkload.from_json(child.workload_of(sys.argv))
    with open_engine(work) as engine:
        engine.generate("Once upon a time", max_tokens=4, **GREEDY)  # warm up
        child.serve(long_ops(engine, work), {"kernels": cortexstream.kernel_info()}, replies)


if __name__ == "__main__":
    main()
