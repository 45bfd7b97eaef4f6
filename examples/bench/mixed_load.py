"""Latency under mixed load, cortexstream vs llama-server on the same GGUF and threads: the
inter-token latency (ITL) of N running streams while a long prompt arrives, that prompt's time
to first token, and the same streams' ITL without it (issue 21).

Both sides get the same token ids: N short prompts decoding greedily (EOS ignored), then, once
every stream has produced its first tokens, one long prompt of real text (the repository's
docs, tokenized and cut to ``--long-tokens``, a different opening each round so no prefix cache
serves it). A stream's ITL samples are the gaps between its consecutive tokens; "while the long
prompt prefills" keeps the gaps that overlap the time from its submission to its first token,
so a stream stalled across the whole prefill counts with the whole stall. The streams are
stopped once the long prompt has its token. The "alone" phase has no long prompt and keeps the
next ``--alone-gaps`` gaps of every stream.

On a shared machine the two phases are only comparable close in time: each round runs, for
each side in turn (llama-server, then ours), an alone phase and right after it a mixed phase,
and ``--rounds`` repeats that. Each phase records the load average (1 min) at its start and end;
the p99 ratio (mixed / alone) is reported per round and as the median over rounds. For our side
each phase also records the engine's step costs in CPU time (the trace records
``cortexstream.step``): the mean decode-only step of the alone phase and the mean step carrying
prompt tokens of the mixed phase, whose ratio is what the step budget holds, whatever the load.

Usage: python examples/bench/mixed_load.py [--model smollm2|PATH] [--threads 1] [--streams 8]
       [--long-tokens 4096] [--rounds 3] [--target-step-ms MS] [--skip-peer] [--quick]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import logging
import os
import shlex
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_models
import cortexstream
import peer
from machine import commit_hash, cpu_description, footer
from progress import Progress
from side_by_side import setup_peer
from workload import Workload

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GREEDY = {"temperature": 0.0, "ignore_eos": True}
# Gaps every stream has before the long prompt is sent (all of them are decoding by then).
WARM_TOKENS = 4
# A stream's cap; it is stopped long before when the long prompt gets its token.
STREAM_MAX_TOKENS = 3000
TIMEOUT_S = 1800.0


def real_text() -> str:
    """English prose that ships with the repository: its docs and READMEs, in a fixed order."""
    paths = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md", HERE / "README.md"]
    return "\n\n".join(p.read_text(encoding="utf-8") for p in paths)


def stream_prompt(i: int) -> str:
    return f"Write a long story about lighthouse keeper number {i}, who kept a diary of every storm."


@dataclass
class Recorder:
    """Arrival times (perf_counter) of one stream's tokens, and a flag to stop it."""

    arrivals: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    # Set when the request ended (a stream that hit its cap is not waited for).
    done: bool = False


# (token ids, max tokens, recorder): runs one request to its end or until recorder.stop is set.
RunStream = Callable[[list[int], int, Recorder], None]


def run_phase(run: RunStream, prompts: list[list[int]], long_ids: list[int] | None, alone_gaps: int) -> dict[str, Any]:
    """Starts a stream per prompt; once each has WARM_TOKENS + 1 tokens sends ``long_ids`` (if
    any) and waits for its first token, or without it keeps ``alone_gaps`` gaps of each stream;
    returns the gaps that count and the long prompt's TTFT."""
    recorders = [Recorder() for _ in prompts]

    def client(ids: list[int], recorder: Recorder) -> None:
        try:
            run(ids, STREAM_MAX_TOKENS, recorder)
        except BaseException as error:  # reported below, after the others are stopped
            recorder.error = error
        recorder.done = True

    threads = [threading.Thread(target=client, args=(ids, r), daemon=True) for ids, r in zip(prompts, recorders)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        wait_until(lambda: all(len(r.arrivals) > WARM_TOKENS or r.error for r in recorders), deadline)
        result: dict[str, Any] = {}
        if long_ids is None:
            start = [len(r.arrivals) for r in recorders]
            wait_until(lambda: all(len(r.arrivals) > s + alone_gaps or r.error for r, s in zip(recorders, start)),
                       deadline)
            gaps = [b - a for r, s in zip(recorders, start) for a, b in zip(r.arrivals[s:], r.arrivals[s + 1:])]
        else:
            long = Recorder()
            submitted = time.perf_counter()
            run(long_ids, 1, long)
            if long.error or not long.arrivals:
                raise RuntimeError(f"the long prompt failed: {long.error}")
            first = long.arrivals[0]
            # Wait for the first token after the long one from every stream, so a stall that
            # ends with the prefill is counted whole.
            counts = [len(r.arrivals) for r in recorders]
            wait_until(lambda: all(len(r.arrivals) > c or r.done for r, c in zip(recorders, counts)), deadline)
            gaps = [b - a for r in recorders for a, b in zip(r.arrivals, r.arrivals[1:]) if b > submitted and a < first]
            result["long_ttft_s"] = first - submitted
        result.update(itl_stats(gaps))
    finally:
        for r in recorders:
            r.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    errors = [r.error for r in recorders if r.error]
    if errors:
        raise RuntimeError(f"a stream failed: {errors[0]!r}")
    return result


def wait_until(condition: Callable[[], bool], deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the streams took too long")
        time.sleep(0.005)


def itl_stats(gaps: list[float]) -> dict[str, Any]:
    if not gaps:
        raise RuntimeError("no inter-token gaps were measured")
    ordered = sorted(gaps)
    return {
        "itl_samples": len(ordered),
        "itl_p50_s": statistics.median(ordered),
        "itl_p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "itl_max_s": ordered[-1],
    }


def our_stream(engine: cortexstream.Engine) -> RunStream:
    def run(ids: list[int], max_tokens: int, recorder: Recorder) -> None:
        with engine.stream(ids, max_tokens=max_tokens, **GREEDY) as stream:
            for chunk in stream:
                if chunk.token_id is not None:
                    recorder.arrivals.append(time.perf_counter())
                if recorder.stop.is_set():
                    stream.cancel()
                    return

    return run


def peer_stream(server: peer.LlamaServer) -> RunStream:
    def run(ids: list[int], max_tokens: int, recorder: Recorder) -> None:
        body = {"prompt": ids, "n_predict": max_tokens, "cache_prompt": False, "stream": True,
                "return_tokens": True, **GREEDY}
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
        try:
            connection.request("POST", "/completion", body=json.dumps(body),
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"llama-server /completion: HTTP {response.status} {response.read()[:300]!r}")
            for event in peer._sse_events(response):
                if not event.get("stop") and (event.get("tokens") or event.get("content")):
                    recorder.arrivals.append(time.perf_counter())
                if event.get("stop") or recorder.stop.is_set():
                    return  # closing the connection cancels the slot
        finally:
            connection.close()

    return run


class StepCosts(logging.Handler):
    """Collects our engine's per-step trace records (``cortexstream.step``: decodes, prompt
    tokens, CPU and wall microseconds) while attached."""

    def __init__(self) -> None:
        super().__init__(level=1)
        self.steps: list[dict[str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.steps.append(dict(record.fields))  # type: ignore[attr-defined]

    def summary(self, prompt_steps: bool, decodes: int) -> dict[str, Any]:
        """Mean CPU and wall ms of the steps with (or without) prompt tokens beside exactly
        ``decodes`` decodes (every stream: not the steps while they start or stop)."""
        chosen = [s for s in self.steps if (s["prompt_tokens"] > 0) == prompt_steps and s["decodes"] == decodes]
        if not chosen:
            return {"steps": 0}
        return {"steps": len(chosen),
                "cpu_ms": statistics.fmean(s["cpu_us"] for s in chosen) / 1000,
                "wall_ms": statistics.fmean(s["wall_us"] for s in chosen) / 1000,
                "prompt_tokens": statistics.fmean(s["prompt_tokens"] for s in chosen)}


class OurSteps:
    """While open, our engine's step records go to a :class:`StepCosts`."""

    def __enter__(self) -> StepCosts:
        self.costs = StepCosts()
        self.logger = logging.getLogger("cortexstream.step")
        self.level = self.logger.level
        self.logger.setLevel(cortexstream.logs.TRACE)
        self.logger.propagate = False
        self.logger.addHandler(self.costs)
        cortexstream.logs.forward_logs(cortexstream.logs.TRACE)
        return self.costs

    def __exit__(self, *exc: object) -> None:
        cortexstream.logs.forward_logs()  # back to the level logging is configured for
        self.logger.removeHandler(self.costs)
        self.logger.setLevel(self.level)


def load() -> float:
    return os.getloadavg()[0]


def measure_round(run: RunStream, prompts: list[list[int]], long_ids: list[int], alone_gaps: int,
                  progress: Progress, side: str, ours: bool) -> dict[str, Any]:
    """One alone phase and right after it one mixed phase of one side."""
    result: dict[str, Any] = {}
    for phase, ids in (("alone", None), ("mixed", long_ids)):
        what = "alone" if ids is None else f"while a {len(long_ids)}-token prompt arrives"
        progress.step(f"{side}: {len(prompts)} streams {what}")
        load_start = load()
        if ours:
            with OurSteps() as costs:
                stats = run_phase(run, prompts, ids, alone_gaps)
            stats["step_costs"] = costs.summary(prompt_steps=ids is not None, decodes=len(prompts))
            if ids is not None:
                # The decode-only steps the budget itself runs to re-measure the decodes.
                stats["step_costs"]["decode_only"] = costs.summary(prompt_steps=False, decodes=len(prompts))
        else:
            stats = run_phase(run, prompts, ids, alone_gaps)
        stats["load_avg"] = [load_start, load()]
        print(f"{side} {phase}: {json.dumps(stats)}", file=sys.stderr, flush=True)
        result[phase] = stats
    result["itl_p99_ratio"] = result["mixed"]["itl_p99_s"] / result["alone"]["itl_p99_s"]
    if ours:
        alone, mixed = result["alone"]["step_costs"], result["mixed"]["step_costs"]
        if alone["steps"] and mixed["steps"]:
            result["step_cpu_ratio"] = mixed["cpu_ms"] / alone["cpu_ms"]
        if mixed["steps"] and mixed["decode_only"]["steps"]:
            # Against the decodes as they cost during the prefill (their contexts grew since
            # the alone phase): the ratio the budget itself holds to at most 2.
            result["step_cpu_ratio_same_phase"] = mixed["cpu_ms"] / mixed["decode_only"]["cpu_ms"]
    return result


def side_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's result: the median over rounds of every number a round reports, in a round's
    own shape (``alone`` / ``mixed`` with ``itl_p50_s``, ``itl_p99_s``, ``long_ttft_s``), the
    median of the rounds' p99 ratios, and every round."""
    def median_of(pick: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = [v for v in map(pick, rounds) if v is not None]
        return statistics.median(values) if values else None

    summary: dict[str, Any] = {phase: {key: median_of(lambda r: r[phase][key]) for key in ("itl_p50_s", "itl_p99_s")}
                               for phase in ("alone", "mixed")}
    summary["mixed"]["long_ttft_s"] = median_of(lambda r: r["mixed"]["long_ttft_s"])
    summary["itl_p99_ratio"] = median_of(lambda r: r["itl_p99_ratio"])
    summary["step_cpu_ratio"] = median_of(lambda r: r.get("step_cpu_ratio"))
    summary["step_cpu_ratio_same_phase"] = median_of(lambda r: r.get("step_cpu_ratio_same_phase"))
    summary["rounds"] = rounds
    return summary


def round_prompt(text_ids: list[int], opening: list[int], length: int) -> list[int]:
    """``length`` tokens: the round's own opening, then the docs."""
    return (opening + text_ids)[:length]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a GGUF path or a name (" +
                        ", ".join(bench_models.known_names()) + "; default smollm2)")
    parser.add_argument("--threads", type=int, default=1, help="compute threads of each side (default 1)")
    parser.add_argument("--streams", type=int, default=None, help="running streams (default 8)")
    parser.add_argument("--long-tokens", type=int, default=None, help="tokens of the long prompt (default 4096)")
    parser.add_argument("--rounds", type=int, default=None, help="alone/mixed pairs of each side (default 3)")
    parser.add_argument("--alone-gaps", type=int, default=None,
                        help="gaps of each stream the alone phase keeps (default 48)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 streams, a 128-token prompt, 2 rounds of 8 gaps")
    parser.add_argument("--target-step-ms", type=float, default=None,
                        help="our engine's target_step_ms (default: the engine's; 0: a fixed budget)")
    parser.add_argument("--skip-peer", action="store_true", help="run only our side")
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    args = parser.parse_args()
    # What --quick changes, unless given explicitly.
    defaults = {"streams": (8, 2), "long_tokens": (4096, 128), "rounds": (3, 2), "alone_gaps": (48, 8)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("streams", "long_tokens", "rounds", "alone_gaps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def fmt(value: float | None, spec: str = "{:.3f}") -> str:
    return "n/a" if value is None else spec.format(value)


def ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours is not None and theirs else "n/a"


def summary_table(ours: dict[str, Any], theirs: dict[str, Any] | None, streams: int, long_tokens: int,
                  rounds: int) -> str:
    """Medians over rounds, side by side."""
    def get(side: dict[str, Any] | None, key: str) -> float | None:
        if not side:
            return None
        phase, _, name = key.partition("_")
        return side[phase][name] if phase in ("alone", "mixed") else side[key]

    lines = [f"Medians over {rounds} round(s):", "",
             "| metric | ours | llama-server | ours/llama-server |", "|---|---:|---:|---:|"]
    rows = [("alone_itl_p50_s", f"ITL p50 s, {streams} streams alone"),
            ("alone_itl_p99_s", f"ITL p99 s, {streams} streams alone"),
            ("mixed_itl_p50_s", f"ITL p50 s, {streams} streams, {long_tokens}-token prompt"),
            ("mixed_itl_p99_s", f"ITL p99 s, {streams} streams, {long_tokens}-token prompt"),
            ("mixed_long_ttft_s", f"TTFT s of the {long_tokens}-token prompt")]
    for key, label in rows:
        lines.append(f"| {label} | {fmt(get(ours, key))} | {fmt(get(theirs, key))} | "
                     f"{ratio(get(ours, key), get(theirs, key))} |")
    lines.append(f"| ITL p99 with the prompt / alone (median of the rounds' ratios) | "
                 f"{fmt(get(ours, 'itl_p99_ratio'), '{:.2f}x')} | {fmt(get(theirs, 'itl_p99_ratio'), '{:.2f}x')} | |")
    lines.append(f"| our step CPU time with prompt tokens / decodes alone | "
                 f"{fmt(get(ours, 'step_cpu_ratio'), '{:.2f}x')} | | |")
    lines.append(f"| the same / the mixed phase's own decode-only steps | "
                 f"{fmt(get(ours, 'step_cpu_ratio_same_phase'), '{:.2f}x')} | | |")
    return "\n".join(lines)


def rounds_table(name: str, side: dict[str, Any]) -> str:
    """Every round of one side, with the load average of its phases."""
    lines = [f"{name}, per round:", "",
             "| round | ITL p99 alone s | ITL p99 mixed s | p99 ratio | TTFT s | load alone | load mixed | step CPU ratio |",
             "|---:|---:|---:|---:|---:|---|---|---:|"]
    for i, r in enumerate(side["rounds"], 1):
        loads = ["{:.1f}-{:.1f}".format(*r[phase]["load_avg"]) for phase in ("alone", "mixed")]
        lines.append(f"| {i} | {r['alone']['itl_p99_s']:.3f} | {r['mixed']['itl_p99_s']:.3f} | "
                     f"{r['itl_p99_ratio']:.2f}x | {r['mixed']['long_ttft_s']:.3f} | {loads[0]} | {loads[1]} | "
                     f"{fmt(r.get('step_cpu_ratio'), '{:.2f}x')} |")
    return "\n".join(lines)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    args = parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]
    model = str(bench_models.resolve(args.model, peer_bin=setup_peer))
    sides = 1 if args.skip_peer else 2
    progress = Progress(total=1 + (0 if args.skip_peer else 1) + 2 * sides * args.rounds)
    # One slot per stream plus the long prompt's, each with room for the long prompt: the same
    # KV capacity both sides (llama-server's -c, our kv_cache_tokens).
    slot_tokens = args.long_tokens + 512
    work = Workload(model, args.threads, decode_tokens=0, prefill_tokens=0, repeats=1,
                    stream_counts=(args.streams + 1,), stream_tokens=0, ctx_per_slot=slot_tokens)

    progress.step(f"ours: load {Path(model).name}, {args.threads} thread(s)")
    engine_kwargs: dict[str, Any] = {"threads": args.threads, "kv_cache_tokens": work.kv_tokens,
                                     "max_running": args.streams + 1}
    if args.target_step_ms is not None:
        engine_kwargs["target_step_ms"] = args.target_step_ms
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(cortexstream.Engine(model, embedding_model=False, **engine_kwargs))
        text_ids = engine.tokenize(real_text())
        if len(text_ids) < args.long_tokens:
            raise SystemExit(f"the docs hold only {len(text_ids)} tokens")
        prompts = [engine.tokenize(stream_prompt(i)) for i in range(args.streams)]
        openings = [engine.tokenize(f"Document {r + 1} of {args.rounds}, read it all.\n\n") for r in range(args.rounds)]
        engine.generate(prompts[0], max_tokens=4, **GREEDY)  # warm up
        runners = {"ours": our_stream(engine)}
        if not args.skip_peer:
            progress.step(f"llama.cpp: start llama-server --parallel {args.streams + 1} -c {work.kv_tokens}")
            repack = peer.repack_works(cpu_description()["flags"])
            runners["llama.cpp"] = peer_stream(stack.enter_context(peer.LlamaServer(setup_peer(), work, repack)))
        # Each round runs both sides, the peer first; the idle side waits without spinning.
        rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in runners}
        for r in range(args.rounds):
            long_ids = round_prompt(text_ids, openings[r], args.long_tokens)
            for side in sorted(runners, reverse=True):
                rounds[side].append(measure_round(runners[side], prompts, long_ids, args.alone_gaps,
                                                  progress, f"{side} round {r + 1}", side == "ours"))
        results = {side: side_summary(side_rounds) for side, side_rounds in rounds.items()}

    ours, theirs = results["ours"], results.get("llama.cpp")
    print(summary_table(ours, theirs, args.streams, args.long_tokens, args.rounds))
    for name, side in (("ours", ours), ("llama-server", theirs)):
        if side:
            print()
            print(rounds_table(name, side))
    load_end = [round(x, 2) for x in os.getloadavg()]
    print()
    print(footer(cpu_description(), cortexstream.kernel_info(), args.threads, load_start, load_end, commit_hash()))
    if args.json:
        report = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": sys.executable.replace(str(Path.home()), "~", 1) + " " + shlex.join(sys.argv),
            "machine": {"cpus": os.cpu_count(), "cpu": cpu_description(), "loadavg": os.getloadavg()},
            "streams": args.streams,
            "long_tokens": args.long_tokens,
            "rounds": args.rounds,
            "alone_gaps": args.alone_gaps,
            "target_step_ms": args.target_step_ms,
            "ours": ours,
            "llama_cpp": theirs,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
