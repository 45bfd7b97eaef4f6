"""cortexstream vs llama.cpp, side by side on the same GGUF, threads and prompts, in one run.

Measures single-stream decode, prefill, time to first token, aggregate decode over concurrent
streams, peak RSS and decode as a share of the memory-bandwidth bound; prints one table of
ratios (ours / llama.cpp) on stdout and optionally writes everything as JSON. Progress goes to
stderr. llama.cpp comes from setup_peer.sh (built once into the cache).

With ``--suite issue21`` it runs issue 21's rows instead (long_context.py): decode at context
positions 128, 2k and 8k, a 4k-token prefill, aggregate decode at 64 and 128 streams.

Usage: python examples/bench/side_by_side.py [--suite standard|issue21]
       [--model smollm2|gemma3|smollm2-q4_k_m|PATH] [--threads 2] [--quick] [--skip-peer]
       [--peer-repack auto|on|off] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import bench_models
import long_context
import ours as our_side
import peer
from machine import cpu_description, read_bandwidth_bytes_per_s, weight_bytes_per_token
from progress import Progress
from streams import measure_streams
from workload import STRUCTURED_SCHEMA, Workload

HERE = Path(__file__).resolve().parent
OURS_TIMEOUT_S = 1800
PEER_SETUP_TIMEOUT_S = 3600
STREAMS_TIMEOUT_S = 900.0
MIB = 1 << 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="smollm2",
        help="GGUF both sides load: a path, or a name (" + ", ".join(bench_models.known_names()) + "; default smollm2)",
    )
    parser.add_argument(
        "--suite",
        choices=("standard", "issue21"),
        default="standard",
        help="standard (default): the rows below; issue21: decode at positions 128/2k/8k, 4k prefill, 64 and 128 streams",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="issue21 suite: runs per single-stream row (default 2; each 8k row prefills 8000 tokens first)",
    )
    parser.add_argument("--threads", type=int, default=2, help="compute threads of each side (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny token counts, 1 and 4 streams")
    parser.add_argument("--skip-peer", action="store_true", help="run only our side (ratios print as n/a)")
    parser.add_argument(
        "--peer-repack",
        choices=("best", "on", "off"),
        default="best",
        help="llama.cpp weight repacking. best (default): llama-bench both ways where repacking works "
        "(not with AMX, see peer.repack_works), each rate from the faster; llama-server with it on",
    )
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    return parser.parse_args()


def run_ours(work: Workload, progress: Progress) -> dict[str, Any]:
    """Our side in a child process, so its peak RSS is the engine's and nothing else's."""
    return progress.run_child(HERE / "ours.py", work.to_json(), our_side.step_count(work), OURS_TIMEOUT_S)


def setup_peer() -> Path:
    """Builds llama.cpp on first use (minutes), then just returns its bin directory."""
    completed = subprocess.run(
        [str(HERE / "setup_peer.sh")], stdout=subprocess.PIPE, check=True, timeout=PEER_SETUP_TIMEOUT_S, text=True
    )
    return Path(completed.stdout.strip().splitlines()[-1])


def peer_step_count(work: Workload) -> int:
    """How many progress steps :func:`run_peer` shows."""
    return 6 + len(work.stream_counts)


def repack_settings(choice: str, cpu_flags: list[str]) -> list[bool]:
    """The repacking settings llama-bench runs with; llama-server uses the last."""
    if choice != "best":
        return [choice == "on"]
    return [False, True] if peer.repack_works(cpu_flags) else [False]


def run_peer(work: Workload, ttft_prompt: str, settings: list[bool], progress: Progress) -> dict[str, Any]:
    progress.step("llama.cpp: set up (builds once, ~20 min on 2 cores)")
    bin_dir = setup_peer()
    progress.step(
        f"llama.cpp: llama-bench pp{work.prefill_tokens} tg{work.decode_tokens} x{work.repeats}, "
        f"repack {' and '.join('on' if s else 'off' for s in settings)}"
    )
    result: dict[str, Any] = peer.best_bench(bin_dir, work, settings)
    repack = settings[-1]
    result["server_repack"] = "on" if repack else "off"
    progress.step(f"llama.cpp: start llama-server --parallel {work.max_streams} -c {work.kv_tokens}")
    with peer.LlamaServer(bin_dir, work, repack) as server:
        progress.step(f"llama.cpp: TTFT x{work.repeats}")
        result["ttft_s"] = sorted(server.ttft_s(ttft_prompt, work.repeats))[work.repeats // 2]
        result["streams"] = {}
        for count in work.stream_counts:
            progress.step(f"llama.cpp: {count} concurrent streams x {work.stream_tokens} tokens")
            result["streams"][str(count)] = measure_streams(
                work.stream_prompts(count),
                partial(server.stream_completion, n_predict=work.stream_tokens),
                STREAMS_TIMEOUT_S,
            )
        result["constrained"] = peer_constrained_runs(server, work, ttft_prompt, progress)
        result["peak_rss_bytes"] = server.peak_rss_bytes()
    return result


def peer_constrained_runs(
    server: peer.LlamaServer, work: Workload, ttft_prompt: str, progress: Progress
) -> dict[str, Any]:
    """The JSON-schema rows on llama-server, as ours.constrained_runs (llama-server converts the
    schema to a grammar on every request: its first and later TTFTs are alike)."""
    progress.step(f"llama.cpp: JSON-schema TTFT x{work.repeats + 1}")
    times = server.ttft_s(ttft_prompt, work.repeats + 1, json_schema=STRUCTURED_SCHEMA)
    count = work.max_streams
    progress.step(f"llama.cpp: {count} JSON-schema-constrained streams x {work.stream_tokens} tokens")
    streams = measure_streams(
        work.structured_prompts(count),
        partial(server.stream_completion, n_predict=work.stream_tokens, json_schema=STRUCTURED_SCHEMA),
        STREAMS_TIMEOUT_S,
    )
    work.check_full_length(streams, count)
    return {
        "first_ttft_s": times[0],
        "ttft_s": sorted(times[1:])[work.repeats // 2],
        "streams": {str(count): streams},
    }


# (label, how to read the value from one side's results, unit format)
Row = tuple[str, Callable[[dict[str, Any]], float], str]


def streams_metric(count: int, key: str) -> Callable[[dict[str, Any]], float]:
    """Reads ``key`` of the run with ``count`` concurrent streams."""
    return lambda result: result["streams"][str(count)][key]


def table_rows(work: Workload, bound_tok_s: float, ttft_tokens: int, ttft_kind: str) -> list[Row]:
    rows: list[Row] = [
        (f"decode tok/s (1 stream, {work.decode_tokens} tokens)", lambda r: r["decode_tok_s"], "{:.1f}"),
        (f"prefill tok/s ({work.prefill_tokens}-token prompt)", lambda r: r["prefill_tok_s"], "{:.1f}"),
        (f"TTFT s ({ttft_tokens}-token {ttft_kind} prompt)", lambda r: r["ttft_s"], "{:.3f}"),
    ]
    for count in work.stream_counts:
        rows.append(
            (
                f"aggregate decode tok/s, {count} stream{'s' if count > 1 else ''}",
                streams_metric(count, "aggregate_tok_s"),
                "{:.1f}",
            )
        )
    rows += constrained_rows(work, ttft_tokens, ttft_kind)
    rows += [
        (f"mean TTFT s, {work.max_streams} streams", streams_metric(work.max_streams, "mean_ttft_s"), "{:.3f}"),
        ("peak RSS MiB", lambda r: r["peak_rss_bytes"] / MIB, "{:.0f}"),
        (
            f"decode % of bandwidth bound ({bound_tok_s:.0f} tok/s)",
            lambda r: 100 * r["decode_tok_s"] / bound_tok_s,
            "{:.0f}%",
        ),
    ]
    return rows


def constrained_rows(work: Workload, ttft_tokens: int, ttft_kind: str) -> list[Row]:
    """The JSON-schema rows: each side's constrained numbers, and each side's constrained over
    unconstrained ratio (targets: >= 0.85x aggregate decode, <= 1.2x TTFT)."""
    count = work.max_streams

    def constrained(key: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: r["constrained"]["streams"][str(count)][key]

    return [
        (f"aggregate decode tok/s, {count} JSON-schema streams", constrained("aggregate_tok_s"), "{:.1f}"),
        (
            f"  JSON-schema / free aggregate decode, {count} streams",
            lambda r: r["constrained"]["streams"][str(count)]["aggregate_tok_s"]
            / r["streams"][str(count)]["aggregate_tok_s"],
            "{:.2f}x",
        ),
        (f"TTFT s ({ttft_tokens}-token {ttft_kind} prompt, JSON schema cached)", lambda r: r["constrained"]["ttft_s"], "{:.3f}"),
        ("  JSON-schema / free TTFT", lambda r: r["constrained"]["ttft_s"] / r["ttft_s"], "{:.2f}x"),
        ("TTFT s, first request of a new JSON schema", lambda r: r["constrained"]["first_ttft_s"], "{:.3f}"),
    ]


def build_table(rows: list[Row], ours: dict[str, Any], theirs: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The printed table and, per row, the numbers behind it (ratio None without a peer)."""
    header = ("metric", "ours", "llama.cpp", "ours/llama.cpp")
    lines, ratios = [], {}
    for label, read, fmt in rows:
        mine = read(ours)
        peer_value = read(theirs) if theirs else None
        ratio = mine / peer_value if peer_value else None
        ratios[label] = {"ours": mine, "llama_cpp": peer_value, "ratio": ratio}
        lines.append(
            (
                label,
                fmt.format(mine),
                "n/a" if peer_value is None else fmt.format(peer_value),
                "n/a" if ratio is None else f"{ratio:.2f}x",
            )
        )
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(4)]

    def render(cells: tuple[str, ...]) -> str:
        padded = (cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([render(header), separator, *map(render, lines)]), ratios


def write_report(path: Path, machine: dict[str, Any], workload: dict[str, Any], ours, theirs, ratios) -> None:
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        # "~" unquoted, so the recorded command can be pasted into a shell as is.
        "command": sys.executable.replace(str(Path.home()), "~", 1) + " " + shlex.join(sys.argv),
        "machine": machine,
        "workload": workload,
        "ours": ours,
        "llama_cpp": theirs,
        "table": ratios,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def run_issue21(args: argparse.Namespace, model: Path) -> None:
    """Issue 21's rows (long_context.py), ours and the peer's, in one table of ratios."""
    work = long_context.LongWorkload.create(str(model), args.threads, args.quick, args.repeats)
    cpu = cpu_description()
    settings = repack_settings(args.peer_repack, cpu["flags"])
    peer_steps = 1 + long_context.peer_step_count(work, settings)
    progress = Progress(total=long_context.step_count(work) + (0 if args.skip_peer else peer_steps))
    load_start = long_context.load_average()
    ours = long_context.run_ours(work, progress)
    theirs = None
    if not args.skip_peer:
        progress.step("llama.cpp: set up (builds once, ~20 min on 2 cores)")
        theirs = long_context.run_peer(setup_peer(), work, settings, progress)
    load_end = long_context.load_average()
    table, ratios = build_table(long_context.table_rows(work), ours, theirs)
    print(table)
    kernels = ", ".join(f"{key} {value}" for key, value in ours["kernels"].items())
    print(f"CPU: {cpu['model']} ({' '.join(cpu['flags'])}); our kernels: {kernels}")
    print(f"load average (1/5/15 min): {load_start} at the start, {load_end} at the end")
    if theirs:
        print(f"llama.cpp repacking per row (llama-bench, the faster setting): {theirs['repack']}; "
              f"llama-server {theirs['server_repack']}")
    if args.json:
        machine = {"cpus": os.cpu_count(), "cpu": cpu, "kernels": ours["kernels"],
                   "load_average_start": load_start, "load_average_end": load_end}
        write_report(args.json, machine, work.to_json(), ours, theirs, ratios)


def main() -> None:
    # A SIGTERM (a CI timeout, say) unwinds like Ctrl-C, so llama-server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    args = parse_args()
    model = bench_models.resolve(args.model, peer_bin=setup_peer)
    if args.suite == "issue21":
        run_issue21(args, model)
        return
    work = Workload.create(str(model), args.threads, args.quick)
    cpu = cpu_description()
    settings = repack_settings(args.peer_repack, cpu["flags"])
    peer_steps = 0 if args.skip_peer else peer_step_count(work)
    progress = Progress(total=1 + our_side.step_count(work) + peer_steps)

    progress.step(f"memory read bandwidth, {args.threads} threads over 1 GiB")
    bandwidth = read_bandwidth_bytes_per_s(args.threads)
    weight_bytes = weight_bytes_per_token(work.model)
    bound_tok_s = bandwidth / weight_bytes

    ours = run_ours(work, progress)
    theirs = None if args.skip_peer else run_peer(work, ours["ttft_prompt"], settings, progress)

    rows = table_rows(work, bound_tok_s, ours["ttft_prompt_tokens"], ours["ttft_kind"])
    table, ratios = build_table(rows, ours, theirs)
    print(table)
    if theirs:
        print(
            f"llama.cpp repacking: decode {theirs['decode_tok_s_repack']}, prefill {theirs['prefill_tok_s_repack']}"
            f" (llama-bench, the faster setting each), llama-server {theirs['server_repack']}"
        )
    if args.json:
        machine = {
            "cpus": os.cpu_count(),
            "cpu": cpu,
            "kernels": ours["kernels"],
            "read_bandwidth_bytes_per_s": bandwidth,
            "weight_bytes_per_token": weight_bytes,
            "decode_bound_tok_s": bound_tok_s,
        }
        write_report(args.json, machine, work.to_json(), ours, theirs, ratios)


if __name__ == "__main__":
    main()
