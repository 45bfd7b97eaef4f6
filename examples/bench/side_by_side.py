"""cortexstream vs llama.cpp, side by side on the same GGUF, threads and prompts, in one run.

Measures single-stream decode, prefill, time to first token, aggregate decode over concurrent
streams, peak RSS and decode as a share of the memory-bandwidth bound; prints one table of
ratios (ours / llama.cpp) on stdout and optionally writes everything as JSON. Progress goes to
stderr. llama.cpp comes from setup_peer.sh (built once into the cache).

Every measurement runs on both sides back to back, the order flipping each round (rounds.py);
``--rounds N`` repeats the whole set N times and each row reports the median of its per-round
ratios and their range.

Suites: ``standard`` (the rows above), ``issue16`` (the standard rows for Gemma 3 270M and
SmolLM2 Q4_K_M against issue 16's targets), ``issue21`` (the standard rows against issue 21's
raised targets, decode at context positions 128/2k/8k, a 4k prefill, 64 and 128 streams
(long_context.py), latency under mixed load (mixed_load.py) and per-stream RSS with f16 and q8_0
KV (kv_cache_types.py)). The issue suites print each row's target and whether it was met.

Usage: python examples/bench/side_by_side.py [--suite standard|issue16|issue21]
       [--model smollm2|gemma3|smollm2-q4_k_m|PATH] [--threads 2] [--rounds 1] [--quick]
       [--skip-peer] [--peer-repack best|on|off] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import bench_models
import kv_cache_types
import long_context
import peer
import rounds
import targets
from child import OursChild
from machine import (
    children_cpu_seconds,
    commit_hash,
    cpu_description,
    footer,
    process_cpu_seconds,
    read_bandwidth_bytes_per_s,
    weight_bytes_per_token,
)
from peer import setup_peer  # noqa: F401  (mixed_load.py imports it from here)
from progress import Progress
from rounds import Measurement, Row, Target
from streams import measure_streams
from workload import Workload, structured_schema

HERE = Path(__file__).resolve().parent
OURS_TIMEOUT_S = 3600
MIXED_TIMEOUT_S = 3600
STREAMS_TIMEOUT_S = 900.0
MIB = 1 << 20
SUITES = ("standard", "issue16", "issue21")
ISSUE16_MODELS = ("gemma3", "smollm2-q4_k_m")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        help="GGUF both sides load: a path, or a name (" + ", ".join(bench_models.known_names()) + "; default "
        "smollm2; the issue16 suite runs " + " and ".join(ISSUE16_MODELS) + ")",
    )
    parser.add_argument(
        "--suite",
        choices=SUITES,
        default="standard",
        help="standard (default); issue16: the standard rows of " + " and ".join(ISSUE16_MODELS) + " against "
        "issue 16's targets; issue21: every row of issue 21 (standard rows with its raised targets, "
        "long contexts, 64/128 streams, mixed load, f16 and q8_0 KV) against its targets",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="times every measurement runs on each side, alternating which side goes first "
        "(default 1); rows report the median of the per-round ratios and their range",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="issue21 suite: runs per single-stream long-context row (default 2; each 8k row prefills 8000 tokens first)",
    )
    parser.add_argument("--threads", type=int, default=2, help="compute threads of each side (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny token counts and stream counts")
    parser.add_argument("--skip-peer", action="store_true", help="run only our side (ratios print as n/a)")
    parser.add_argument(
        "--peer-repack",
        choices=("best", "on", "off"),
        default="best",
        help="llama.cpp weight repacking. best (default): llama-bench both ways where repacking works "
        "(not with AMX, see peer.repack_works), each rate from the faster; llama-server with it on",
    )
    parser.add_argument("--json", type=Path, help="write all results (every round) to this JSON file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.suite == "issue16" and args.model:
        parser.error(f"--suite issue16 runs {' and '.join(ISSUE16_MODELS)}; --model does not apply")
    return args


@dataclass
class Run:
    """What every section of a suite shares: the options, the machine, the progress display."""

    args: argparse.Namespace
    progress: Progress
    cpu: dict[str, Any] = field(default_factory=cpu_description)
    kernels: dict[str, Any] | None = None

    @property
    def with_peer(self) -> bool:
        return not self.args.skip_peer

    @property
    def repack_settings(self) -> list[bool]:
        """The repacking settings llama-bench runs with; llama-server uses the last."""
        choice = self.args.peer_repack
        if choice != "best":
            return [choice == "on"]
        return [False, True] if peer.repack_works(self.cpu["flags"]) else [False]

    def run_rounds(self, measurements: list[Measurement], cpu_clocks: rounds.CpuClocks) -> list[dict[str, Any]]:
        self.progress.total += rounds.step_count(measurements, self.args.rounds, self.with_peer)
        return rounds.run_rounds(measurements, self.args.rounds, self.with_peer, self.progress, cpu_clocks)

    def open_ours(self, stack: ExitStack, script: str, work: dict[str, Any], model: str) -> OursChild:
        self.progress.step(f"ours: load {Path(model).name}, warm up")
        ours = stack.enter_context(OursChild(HERE / script, work, OURS_TIMEOUT_S))
        self.kernels = ours.hello["kernels"]
        return ours


def session_clocks(ours: OursChild, server: peer.LlamaServer | None) -> rounds.CpuClocks:
    """CPU time of each side while both stay up: our child's, and llama-server's plus that of
    the llama-bench runs (this process's finished children; our child is still running)."""
    clocks = {rounds.OURS: partial(process_cpu_seconds, ours.process.pid)}
    if server is not None:
        clocks[rounds.PEER] = lambda: process_cpu_seconds(server.process.pid) + children_cpu_seconds()
    return clocks


@dataclass
class Section:
    """One group of rows measured together (one model and workload)."""

    name: str
    rows: list[Row]
    records: list[dict[str, Any]]
    workload: dict[str, Any]
    facts: dict[str, Any] = field(default_factory=dict)

    def summaries(self) -> list[dict[str, Any]]:
        return rounds.summarize(self.rows, self.records)


# ---------------------------------------------------------------- the standard rows


class PeerStandard:
    """llama.cpp's side of the standard rows: llama-bench for decode and prefill (each repacking
    setting, the faster kept), one llama-server for the TTFT, streams and constrained rows."""

    def __init__(self, bin_dir: Path, work: Workload, settings: list[bool], ttft_prompt: str) -> None:
        self.bin_dir, self.work, self.settings, self.ttft_prompt = bin_dir, work, settings, ttft_prompt
        self.server = peer.LlamaServer(bin_dir, work, settings[-1])

    def __enter__(self) -> PeerStandard:
        self.server.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.__exit__(*exc_info)

    def single_stream(self, round_index: int) -> dict[str, Any]:
        return peer.best_bench(self.bin_dir, self.work, self.settings)

    def ttft(self, round_index: int) -> dict[str, Any]:
        return {"ttft_s": statistics.median(self.server.ttft_s(self.ttft_prompt, self.work.repeats))}

    def streams(self, round_index: int, count: int) -> dict[str, Any]:
        prompts = self.work.stream_prompts(count, round_index)
        run_one = partial(self.server.stream_completion, n_predict=self.work.stream_tokens)
        return {"streams": {str(count): measure_streams(prompts, run_one, STREAMS_TIMEOUT_S)}}

    def constrained(self, round_index: int) -> dict[str, Any]:
        """The JSON-schema rows on llama-server, as ours.constrained_runs (llama-server converts
        the schema to a grammar on every request: its first and later TTFTs are alike)."""
        schema = structured_schema(round_index)
        times = self.server.ttft_s(self.ttft_prompt, self.work.repeats + 1, json_schema=schema)
        count = self.work.max_streams
        run_one = partial(self.server.stream_completion, n_predict=self.work.stream_tokens, json_schema=schema)
        streams = measure_streams(self.work.structured_prompts(count, round_index), run_one, STREAMS_TIMEOUT_S)
        self.work.check_full_length(streams, count)
        constrained = {"first_ttft_s": times[0], "ttft_s": statistics.median(times[1:]), "streams": {str(count): streams}}
        return {"constrained": constrained}

    def peak_rss(self, round_index: int) -> dict[str, Any]:
        return {"peak_rss_bytes": self.server.peak_rss_bytes(), "server_repack": "on" if self.settings[-1] else "off"}


def decode_bound(work: Workload) -> rounds.JointRun:
    """The single-stream decode bound of this round, for both sides alike: read bandwidth
    (measured now, just before the decode runs) over the bytes a decode step reads."""
    weight_bytes = weight_bytes_per_token(work.model)

    def measure(round_index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        bandwidth = read_bandwidth_bytes_per_s(work.threads)
        bound = {"read_bandwidth_bytes_per_s": bandwidth, "decode_bound_tok_s": bandwidth / weight_bytes}
        return bound, dict(bound)

    return measure


def standard_measurements(work: Workload, ours: OursChild, theirs: PeerStandard | None) -> list[Measurement]:
    def on_ours(op: str, **args: Any) -> rounds.SideRun:
        return lambda index: ours.call(op, round=index, **args)

    listed = [
        Measurement(f"memory read bandwidth, {work.threads} threads over 1 GiB", joint=decode_bound(work)),
        Measurement(
            f"single-stream decode ({work.decode_tokens} tokens) and prefill ({work.prefill_tokens} tokens) x{work.repeats}",
            on_ours("single_stream"),
            theirs and theirs.single_stream,
        ),
        Measurement(f"TTFT x{work.repeats}", on_ours("ttft"), theirs and theirs.ttft),
    ]
    listed += [
        Measurement(
            f"{count} concurrent streams x {work.stream_tokens} tokens",
            on_ours("streams", count=count),
            theirs and partial(theirs.streams, count=count),
        )
        for count in work.stream_counts
    ]
    listed += [
        Measurement(
            f"JSON-schema TTFT (new schema, then x{work.repeats} cached), {work.max_streams} constrained streams",
            on_ours("constrained"),
            theirs and theirs.constrained,
        ),
        Measurement("peak RSS", on_ours("peak_rss"), theirs and theirs.peak_rss),
    ]
    return listed


def streams_metric(count: int, key: str):
    """Reads ``key`` of the run with ``count`` concurrent streams."""
    return lambda result: result["streams"][str(count)][key]


def standard_rows(work: Workload, facts: dict[str, Any], row_targets: dict[str, Target]) -> list[Row]:
    """The standard rows; ``row_targets`` by row key: decode, prefill, streams (the most streams),
    streams_ttft (their mean TTFT), rss, bound (decode % of the bandwidth bound, each round's
    decode over that round's bound)."""
    bound_tok_s = facts["decode_bound_tok_s"]
    prompt = f"{facts['ttft_prompt_tokens']}-token {facts['ttft_kind']} prompt"
    rows = [
        Row(f"decode tok/s (1 stream, {work.decode_tokens} tokens)", lambda r: r["decode_tok_s"], "{:.1f}",
            row_targets.get("decode")),
        Row(f"prefill tok/s ({work.prefill_tokens}-token prompt)", lambda r: r["prefill_tok_s"], "{:.1f}",
            row_targets.get("prefill")),
        Row(f"TTFT s ({prompt})", lambda r: r["ttft_s"], "{:.3f}"),
    ]
    rows += [
        Row(
            f"aggregate decode tok/s, {count} stream{'s' if count > 1 else ''}",
            streams_metric(count, "aggregate_tok_s"),
            "{:.1f}",
            row_targets.get("streams") if count == work.max_streams else None,
        )
        for count in work.stream_counts
    ]
    rows += constrained_rows(work, prompt)
    rows += [
        Row(f"mean TTFT s, {work.max_streams} streams", streams_metric(work.max_streams, "mean_ttft_s"), "{:.3f}",
            row_targets.get("streams_ttft")),
        Row("peak RSS MiB", lambda r: r["peak_rss_bytes"] / MIB, "{:.0f}", row_targets.get("rss")),
        Row(
            f"decode % of bandwidth bound ({bound_tok_s:.0f} tok/s)",
            lambda r: 100 * r["decode_tok_s"] / r["decode_bound_tok_s"],
            "{:.0f}%",
            row_targets.get("bound"),
        ),
    ]
    return rows


def constrained_rows(work: Workload, prompt: str) -> list[Row]:
    """The JSON-schema rows: each side's constrained numbers, and each side's constrained over
    unconstrained ratio (issue 20's targets: >= 0.85x aggregate decode, <= 1.2x TTFT)."""
    count = work.max_streams

    def constrained(key: str):
        return lambda r: r["constrained"]["streams"][str(count)][key]

    return [
        Row(f"aggregate decode tok/s, {count} JSON-schema streams", constrained("aggregate_tok_s"), "{:.1f}"),
        Row(
            f"  JSON-schema / free aggregate decode, {count} streams",
            lambda r: r["constrained"]["streams"][str(count)]["aggregate_tok_s"] / r["streams"][str(count)]["aggregate_tok_s"],
            "{:.2f}x",
        ),
        Row(f"TTFT s ({prompt}, JSON schema cached)", lambda r: r["constrained"]["ttft_s"], "{:.3f}"),
        Row("  JSON-schema / free TTFT", lambda r: r["constrained"]["ttft_s"] / r["ttft_s"], "{:.2f}x"),
        Row("TTFT s, first request of a new JSON schema", lambda r: r["constrained"]["first_ttft_s"], "{:.3f}"),
    ]


def run_standard(run: Run, model: Path, row_targets: dict[str, Target], name: str = "standard") -> Section:
    work = Workload.create(str(model), run.args.threads, run.args.quick)
    facts: dict[str, Any] = {"weight_bytes_per_token": weight_bytes_per_token(work.model)}
    with ExitStack() as stack:
        ours = run.open_ours(stack, "ours.py", work.to_json(), work.model)
        facts.update(ours.call("ttft_prompt"))
        theirs = None
        if run.with_peer:
            run.progress.step(f"llama.cpp: start llama-server --parallel {work.max_streams} -c {work.kv_tokens}")
            theirs = stack.enter_context(PeerStandard(setup_peer(), work, run.repack_settings, facts["ttft_prompt"]))
        records = run.run_rounds(standard_measurements(work, ours, theirs), session_clocks(ours, theirs and theirs.server))
    facts["decode_bound_tok_s"] = statistics.median(r[rounds.OURS]["decode_bound_tok_s"] for r in records)
    return Section(name, standard_rows(work, facts, row_targets), records, work.to_json(), facts)


# ---------------------------------------------------------------- the issues' suites

def run_issue16(run: Run) -> Iterator[Section]:
    for name in ISSUE16_MODELS:
        model = bench_models.resolve(name, peer_bin=setup_peer)
        yield prefixed(run_standard(run, model, targets.ISSUE16_STANDARD, name), name)


def prefixed(section: Section, prefix: str) -> Section:
    """The section with every row label led by ``prefix`` (several models in one table)."""
    rows = [Row(f"{prefix}: {row.label.strip()}", row.read, row.fmt, row.target) for row in section.rows]
    return Section(section.name, rows, section.records, section.workload, section.facts)


def run_long_context(run: Run, model: Path) -> Section:
    work = long_context.LongWorkload.create(str(model), run.args.threads, run.args.quick, run.args.repeats)
    with ExitStack() as stack:
        ours = run.open_ours(stack, "long_context.py", work.to_json(), work.model)
        theirs = None
        if run.with_peer:
            run.progress.step(f"llama.cpp: start llama-server --parallel {work.max_streams} -c "
                              f"{work.stream_workload().kv_tokens}")
            theirs = stack.enter_context(long_context.PeerLong(setup_peer(), work, run.repack_settings))
        records = run.run_rounds(long_context.measurements(work, ours, theirs), session_clocks(ours, theirs and theirs.server))
    rows = long_context.table_rows(work, targets.ISSUE21_LONG_CONTEXT)
    return Section("long_context", rows, records, work.to_json())


# Issue 21, mixed load: 8 running streams while a 4096-token prompt arrives (--quick: 2 streams,
# 128 tokens, mixed_load.py's own quick sizes).
MIXED_SIZES = {False: (8, 4096), True: (2, 128)}


def run_mixed_load(run: Run, model: Path) -> Section:
    """mixed_load.py as it is, one of its rounds per round here: each runs both sides, an alone
    then a mixed phase each (its own order: llama-server first)."""
    streams, tokens = MIXED_SIZES[run.args.quick]
    command = [sys.executable, str(HERE / "mixed_load.py"), "--model", str(model), "--threads", str(run.args.threads),
               "--streams", str(streams), "--long-tokens", str(tokens), "--rounds", "1",
               *(("--quick",) if run.args.quick else ()), *(("--skip-peer",) if run.args.skip_peer else ())]

    def both(round_index: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "mixed_load.json"
            # Its table and progress go to our stderr: stdout carries only the final table.
            subprocess.run([*command, "--json", str(out)], stdout=sys.stderr, check=True, timeout=MIXED_TIMEOUT_S)
            report = json.loads(out.read_text())
        theirs = report.get("llama_cpp")
        return {"mixed_load": report["ours"]["rounds"][0]}, theirs and {"mixed_load": theirs["rounds"][0]}

    label = "mixed load (mixed_load.py " + " ".join(command[2:]) + ")"
    records = run.run_rounds([Measurement(label, joint=both)], {rounds.JOINT: children_cpu_seconds})
    return Section("mixed_load", mixed_rows(streams, tokens), records, {"command": command})


def mixed_rows(streams: int, tokens: int) -> list[Row]:
    """Rows of one mixed_load.py round (its "rounds" entries: alone and mixed phases)."""
    def read(phase: str, key: str):
        return lambda r: r["mixed_load"][phase][key]

    rows = [
        Row(f"ITL {p} s, {streams} streams{what}", read(phase, f"itl_{p}_s"), "{:.3f}")
        for phase, what in (("alone", " alone"), ("mixed", f", {tokens}-token prompt arriving"))
        for p in ("p50", "p99")
    ]
    rows += [
        Row(f"  ITL p99 with the {tokens}-token prompt / alone",
            lambda r: r["mixed_load"]["mixed"]["itl_p99_s"] / r["mixed_load"]["alone"]["itl_p99_s"], "{:.2f}x",
            targets.ISSUE21_MIXED_ITL_P99),
        Row(f"TTFT s of the {tokens}-token prompt, {streams} streams running", read("mixed", "long_ttft_s"), "{:.3f}",
            targets.ISSUE21_MIXED_LONG_TTFT),
        # What the step budget holds whatever the load (our engine's step trace): the CPU time of
        # our steps carrying prompt tokens over that of the decode-only steps, of the alone phase
        # and of the mixed phase itself (the one held to 2x).
        Row("  our step CPU, steps with prompt tokens / decode-only steps alone",
            lambda r: r["mixed_load"].get("step_cpu_ratio"), "{:.2f}x", ours_only=True),
        Row("  our step CPU, steps with prompt tokens / decode-only steps of the same phase",
            lambda r: r["mixed_load"].get("step_cpu_ratio_same_phase"), "{:.2f}x", ours_only=True),
    ]
    return rows


def run_kv_cache_types(run: Run, model: Path) -> Section:
    """kv_cache_types.py's runs (a fresh child of ours per cache type, a llama-server per type)."""
    work = Workload.create(str(model), run.args.threads, run.args.quick)
    bin_dir = setup_peer() if run.with_peer else None

    def ours(cache_type: str, round_index: int) -> dict[str, Any]:
        return {"kv": {cache_type: kv_cache_types.run_ours(cache_type, work)}}

    def theirs(cache_type: str, round_index: int) -> dict[str, Any]:
        assert bin_dir is not None
        return {"kv": {cache_type: kv_cache_types.run_peer(cache_type, work, bin_dir)}}

    count = work.max_streams
    measurements = [
        Measurement(f"{t} KV cache: decode x{work.repeats}, {count} streams x {work.stream_tokens} tokens, peak RSS",
                    partial(ours, t), partial(theirs, t) if bin_dir else None)
        for t in kv_cache_types.CACHE_TYPES
    ]
    rows = [
        Row(f"peak RSS per stream MiB, {t} KV ({count} streams x {work.stream_tokens} tokens)",
            lambda r, t=t: r["kv"][t]["peak_rss_bytes"] / MIB / count, "{:.2f}")
        for t in kv_cache_types.CACHE_TYPES
    ]
    # Every run is a process of its own, finished by the time the run ends.
    clocks = {rounds.OURS: children_cpu_seconds, rounds.PEER: children_cpu_seconds}
    return Section("kv_cache_types", rows, run.run_rounds(measurements, clocks), work.to_json())


def run_issue21(run: Run, model: Path) -> Iterator[Section]:
    yield run_standard(run, model, targets.issue21_standard(run.cpu["flags"]))
    yield run_long_context(run, model)
    yield run_mixed_load(run, model)
    yield run_kv_cache_types(run, model)


def run_suite(run: Run) -> Iterator[Section]:
    """The suite's sections, each yielded as soon as it is measured."""
    if run.args.suite == "issue16":
        yield from run_issue16(run)
        return
    model = bench_models.resolve(run.args.model or "smollm2", peer_bin=setup_peer)
    if run.args.suite == "issue21":
        yield from run_issue21(run, model)
    else:
        yield run_standard(run, model, {})


# ---------------------------------------------------------------- report


def repack_note(sections: list[Section]) -> str | None:
    """Which repacking setting llama.cpp's rates came from, per round."""
    notes = []
    for section in sections:
        for record in section.records:
            theirs = record[rounds.PEER] or {}
            chosen = {k[: -len("_tok_s_repack")]: v for k, v in theirs.items() if k.endswith("_tok_s_repack")}
            chosen.update(theirs.get("repack", {}))
            if chosen or "server_repack" in theirs:
                settings = ", ".join(f"{k} {v}" for k, v in chosen.items())
                notes.append(f"{section.name} round {record['round']}: {settings}; llama-server {theirs.get('server_repack', 'n/a')}")
    return "llama.cpp repacking (llama-bench: the faster setting): " + "; ".join(notes) if notes else None


def rounds_note(count: int, with_peer: bool) -> str:
    if not with_peer:
        return f"rounds: {count} (our side only)"
    return (f"rounds: {count}; each measurement ran on both sides back to back, ours first in rounds 1, 3, ..., "
            "llama.cpp first in rounds 2, 4, ...; ratio = median of the rounds' ratios")


def cpu_share_note(records: list[dict[str, Any]], threads: int) -> str:
    shares = rounds.cpu_shares(records, threads)
    text = ", ".join(f"{side} {share:.0%}" for side, share in shares.items()) or "n/a"
    return (f"CPU each side got (its processes' CPU seconds over wall seconds x {threads} threads, median over "
            f"runs of 1 s or more; low means the machine was busy): {text}")


def write_report(path: Path, machine: dict[str, Any], sections: list[Section], complete: bool) -> None:
    """The JSON report; ``complete`` is False while later sections are still to run."""
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "complete": complete,
        # "~" unquoted, so the recorded command can be pasted into a shell as is.
        "command": sys.executable.replace(str(Path.home()), "~", 1) + " " + shlex.join(sys.argv),
        "machine": machine,
        "sections": [
            {"name": s.name, "workload": s.workload, "facts": s.facts, "table": s.summaries(), "rounds": s.records}
            for s in sections
        ],
    }
    partial_path = path.with_name(path.name + ".partial")
    partial_path.write_text(json.dumps(report, indent=2) + "\n")
    partial_path.replace(path)  # never a half-written file under the final name
    print(f"wrote {path}{'' if complete else ' (so far)'}", file=sys.stderr)


def main() -> None:
    # A SIGTERM (a CI timeout, say) unwinds like Ctrl-C, so llama-server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    args = parse_args()
    run = Run(args, Progress())
    load_start = rounds.load_average()
    commit = commit_hash()
    sections: list[Section] = []
    for section in run_suite(run):
        sections.append(section)
        if args.json:  # after every section, so a long run that fails later keeps what it measured
            write_report(args.json, machine_facts(run, load_start, None, commit), sections, complete=False)
    load_end = rounds.load_average()

    rows = [row for section in sections for row in section.rows]
    summaries = [summary for section in sections for summary in section.summaries()]
    print(rounds.render_table(rows, summaries, args.rounds))
    note = repack_note(sections)
    if note:
        print(note)
    print(rounds_note(args.rounds, run.with_peer))
    print(cpu_share_note([record for section in sections for record in section.records], args.threads))
    print(footer(run.cpu, run.kernels, args.threads, load_start, load_end, commit))
    if args.json:
        write_report(args.json, machine_facts(run, load_start, load_end, commit), sections, complete=True)


def machine_facts(run: Run, load_start: list[float], load_end: list[float] | None, commit: str) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu": run.cpu, "kernels": run.kernels, "threads": run.args.threads,
            "rounds": run.args.rounds, "load_average_start": load_start, "load_average_end": load_end,
            "commit": commit}


if __name__ == "__main__":
    main()
