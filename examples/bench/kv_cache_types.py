"""Memory and decode speed with an f16 and an 8-bit (q8_0) KV cache, cortexstream vs
llama-server on the same GGUF and threads, in one run (issue 21).

For each cache type and each side: decode tok/s of one stream (``decode_tokens`` after a short
prompt, as side_by_side.py measures it: ours over ``Timings.decode_ns``, llama.cpp's from
``llama-bench -n``), aggregate decode tok/s of ``max_streams`` (32) concurrent streams of
``stream_tokens`` (128) each, and the peak RSS of the process over the whole run, also divided
by the stream count ("per stream"). Both sides get the same KV capacity (32 slots x 256
tokens: llama-server's ``-c``, our ``kv_cache_tokens``). Ours runs in a child process per
cache type, so its peak RSS is that engine's alone; llama.cpp runs with ``--cache-type-k T
--cache-type-v T -fa on`` (its quantized V cache needs flash attention, so both of its types
run with it). llama-server allocates and clears its whole KV cache at start, ours maps pages
as blocks are first written, so the RSS figures are each side's real footprint for this load,
not the same quantity.

Usage: python examples/bench/kv_cache_types.py [--model smollm2|PATH] [--threads 2] [--quick]
       [--skip-peer] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import bench_models
import peer
from machine import commit_hash, cpu_description, footer
from peer import setup_peer
from rounds import load_average
from streams import measure_streams
from workload import DECODE_PROMPT, Workload

HERE = Path(__file__).resolve().parent
CACHE_TYPES = ("f16", "q8_0")
CHILD_TIMEOUT_S = 1800
STREAMS_TIMEOUT_S = 900.0
MIB = 1 << 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="GGUF path or name (" + ", ".join(bench_models.known_names()) + ")")
    parser.add_argument("--threads", type=int, default=2, help="compute threads of each side (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny token counts, 4 streams")
    parser.add_argument("--skip-peer", action="store_true", help="run only our side")
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    parser.add_argument("--ours-child", metavar="TYPE", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    return parser.parse_args()


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def ours_child(cache_type: str, work: Workload) -> dict[str, Any]:
    """Our side with one cache type (run in a child process: its VmHWM is this engine's)."""
    import ours
    from machine import peak_rss_bytes

    import cortexstream

    with ours.open_engine(work, kv_cache_type=cache_type) as engine:
        engine.generate(DECODE_PROMPT, max_tokens=4, **ours.GREEDY)
        result: dict[str, Any] = {"kernels": cortexstream.kernel_info(), "decode_tok_s": ours.decode_tok_s(engine, work)}
        count = work.max_streams
        result["streams"] = measure_streams(work.stream_prompts(count), ours.run_one_stream(engine, work), STREAMS_TIMEOUT_S)
        result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def run_ours(cache_type: str, work: Workload) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(HERE / "kv_cache_types.py"), "--ours-child", cache_type, "--workload", json.dumps(work.to_json())],
        stdout=subprocess.PIPE,
        check=True,
        timeout=CHILD_TIMEOUT_S,
        text=True,
    )
    return json.loads(completed.stdout)


def peer_cache_args(cache_type: str) -> tuple[str, ...]:
    return ("-ctk", cache_type, "-ctv", cache_type)


def run_peer(cache_type: str, work: Workload, bin_dir: Path) -> dict[str, Any]:
    """llama-bench for single-stream decode, llama-server for the streams and the RSS, both
    with the cache type and flash attention on (repacking off: the server's side_by_side
    default on AMX and a no-op for Q4_1 elsewhere)."""
    rates = peer.bench(bin_dir, work, repack=False, extra_args=(*peer_cache_args(cache_type), "-fa", "1"))
    result: dict[str, Any] = {"decode_tok_s": rates["decode_tok_s"]}
    with peer.LlamaServer(bin_dir, work, repack=False, extra_args=(*peer_cache_args(cache_type), "-fa", "on")) as server:
        result["streams"] = measure_streams(
            work.stream_prompts(work.max_streams),
            partial(server.stream_completion, n_predict=work.stream_tokens),
            STREAMS_TIMEOUT_S,
        )
        result["peak_rss_bytes"] = server.peak_rss_bytes()
    return result


def table(results: dict[str, dict[str, Any]], work: Workload) -> str:
    """Rows per measure; columns per side and cache type, then the q8_0/f16 ratio of each side and
    ours/llama.cpp per cache type."""
    count = work.max_streams
    measures = [
        ("decode tok/s (1 stream)", lambda r: r["decode_tok_s"], "{:.1f}"),
        (f"aggregate decode tok/s ({count} streams)", lambda r: r["streams"]["aggregate_tok_s"], "{:.1f}"),
        ("peak RSS MiB", lambda r: r["peak_rss_bytes"] / MIB, "{:.0f}"),
        (f"peak RSS per stream MiB ({count} streams)", lambda r: r["peak_rss_bytes"] / MIB / count, "{:.2f}"),
    ]
    sides = [side for side in ("ours", "llama.cpp") if side in results]
    header = ["metric"] + [f"{side} {t}" for side in sides for t in CACHE_TYPES]
    header += [f"{side} q8/f16" for side in sides]
    if len(sides) == 2:
        header += [f"ours/llama.cpp {t}" for t in CACHE_TYPES]
    rows = [header]
    for name, value, fmt in measures:
        cells = [name]
        values = {(s, t): value(results[s][t]) for s in sides for t in CACHE_TYPES}
        cells += [fmt.format(values[s, t]) for s in sides for t in CACHE_TYPES]
        cells += [f"{values[s, 'q8_0'] / values[s, 'f16']:.2f}x" for s in sides]
        if len(sides) == 2:
            cells += [f"{values['ours', t] / values['llama.cpp', t]:.2f}x" for t in CACHE_TYPES]
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(" | ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows)


def main() -> None:
    args = parse_args()
    if args.ours_child:
        json.dump(ours_child(args.ours_child, Workload.from_json(json.loads(args.workload))), sys.stdout)
        return
    bin_dir = None if args.skip_peer else setup_peer()
    model = bench_models.resolve(args.model, lambda: bin_dir or setup_peer())
    work = Workload.create(str(model), args.threads, args.quick)
    results: dict[str, dict[str, Any]] = {"ours": {}}
    load_start = load_average()
    for cache_type in CACHE_TYPES:
        log(f"ours, {cache_type} KV: decode x{work.repeats}, {work.max_streams} streams x {work.stream_tokens} tokens")
        results["ours"][cache_type] = run_ours(cache_type, work)
    if bin_dir is not None:
        results["llama.cpp"] = {}
        for cache_type in CACHE_TYPES:
            log(f"llama.cpp, {cache_type} KV: llama-bench tg{work.decode_tokens}, llama-server {work.max_streams} streams")
            results["llama.cpp"][cache_type] = run_peer(cache_type, work, bin_dir)
    load_end = load_average()
    print(table(results, work))
    print(f"model: {model}")
    kernels = results["ours"][CACHE_TYPES[0]].get("kernels")
    print(footer(cpu_description(), kernels, work.threads, load_start, load_end, commit_hash()))
    if args.json:
        summary = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_description(),
            "workload": work.to_json(),
            "load_average": {"start": load_start, "end": load_end},
            "results": results,
        }
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
