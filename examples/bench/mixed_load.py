"""Latency under mixed load, cortexstream vs llama-server on the same GGUF and threads: the
inter-token latency (ITL) of N running streams while a long prompt arrives, that prompt's time
to first token, and the same streams' ITL without it (issue 21).

Both sides get the same token ids: N short prompts decoding greedily (EOS ignored), then, once
every stream has produced its first tokens, one long prompt of real text (the repository's
docs, tokenized and cut to ``--long-tokens``). A stream's ITL samples are the gaps between its
consecutive tokens; "while the long prompt prefills" keeps the gaps that overlap the time from
its submission to its first token, so a stream stalled across the whole prefill counts with the
whole stall. The streams are stopped once the long prompt has its token. The baseline run has
no long prompt and keeps the next ``BASELINE_GAPS`` gaps of every stream.

Usage: python examples/bench/mixed_load.py [--model smollm2|PATH] [--threads 1] [--streams 8]
       [--long-tokens 4096] [--target-step-ms MS] [--skip-peer] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
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
# Gaps of each stream the baseline keeps (after the warm-up).
BASELINE_GAPS = 48
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


def run_mixed(run: RunStream, prompts: list[list[int]], long_ids: list[int] | None) -> dict[str, Any]:
    """Starts a stream per prompt; once each has WARM_TOKENS + 1 tokens sends ``long_ids`` (if
    any) and waits for its first token; returns the gaps that count and the long prompt's TTFT."""
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
            wait_until(lambda: all(len(r.arrivals) > s + BASELINE_GAPS or r.error for r, s in zip(recorders, start)),
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


def measure(run: RunStream, prompts: list[list[int]], long_ids: list[int], progress: Progress, side: str):
    progress.step(f"{side}: {len(prompts)} streams alone")
    alone = run_mixed(run, prompts, None)
    print(f"{side} alone: {json.dumps(alone)}", file=sys.stderr, flush=True)
    progress.step(f"{side}: {len(prompts)} streams while a {len(long_ids)}-token prompt arrives")
    mixed = run_mixed(run, prompts, long_ids)
    print(f"{side} mixed: {json.dumps(mixed)}", file=sys.stderr, flush=True)
    return {"alone": alone, "mixed": mixed}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a GGUF path or a name (" +
                        ", ".join(bench_models.known_names()) + "; default smollm2)")
    parser.add_argument("--threads", type=int, default=1, help="compute threads of each side (default 1)")
    parser.add_argument("--streams", type=int, default=8, help="running streams (default 8)")
    parser.add_argument("--long-tokens", type=int, default=4096, help="tokens of the long prompt (default 4096)")
    parser.add_argument("--target-step-ms", type=float, default=None,
                        help="our engine's target_step_ms (default: the engine's; 0: a fixed budget)")
    parser.add_argument("--skip-peer", action="store_true", help="run only our side")
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    return parser.parse_args()


def row(label: str, ours: float, theirs: float | None, fmt: str = "{:.3f}") -> str:
    ratio = f"{ours / theirs:.2f}x" if theirs else "n/a"
    return f"| {label:<44} | {fmt.format(ours):>9} | {'n/a' if theirs is None else fmt.format(theirs):>9} | {ratio:>6} |"


def table(ours: dict[str, Any], theirs: dict[str, Any] | None, streams: int, long_tokens: int) -> str:
    def get(side: dict[str, Any] | None, run: str, key: str) -> float | None:
        return side[run][key] if side else None

    lines = ["| metric                                       |      ours | llama.cpp |  ratio |",
             "|----------------------------------------------|----------:|----------:|-------:|"]
    for run, what in (("alone", f"{streams} streams alone"), ("mixed", f"{streams} streams, {long_tokens}-token prompt")):
        for key, name in (("itl_p50_s", "ITL p50 s"), ("itl_p99_s", "ITL p99 s")):
            lines.append(row(f"{name}, {what}", ours[run][key], get(theirs, run, key)))
    lines.append(row(f"TTFT s of the {long_tokens}-token prompt", ours["mixed"]["long_ttft_s"],
                     get(theirs, "mixed", "long_ttft_s")))
    for name, side in (("ours", ours), ("llama.cpp", theirs)):
        if side:
            lines.append(f"{name}: ITL p99 with the long prompt / alone = "
                         f"{side['mixed']['itl_p99_s'] / side['alone']['itl_p99_s']:.2f}x")
    return "\n".join(lines)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    args = parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]
    model = str(bench_models.resolve(args.model, peer_bin=setup_peer))
    progress = Progress(total=3 + (0 if args.skip_peer else 3))
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
    with cortexstream.Engine(model, embedding_model=False, **engine_kwargs) as engine:
        long_ids = engine.tokenize(real_text())[: args.long_tokens]
        if len(long_ids) < args.long_tokens:
            raise SystemExit(f"the docs hold only {len(long_ids)} tokens")
        prompts = [engine.tokenize(stream_prompt(i)) for i in range(args.streams)]
        engine.generate(prompts[0], max_tokens=4, **GREEDY)  # warm up
        # The peer first (its run is the shorter one), while our engine sits idle.
        theirs = None
        if not args.skip_peer:
            progress.step(f"llama.cpp: start llama-server --parallel {args.streams + 1} -c {work.kv_tokens}")
            repack = peer.repack_works(cpu_description()["flags"])
            with peer.LlamaServer(setup_peer(), work, repack) as server:
                theirs = measure(peer_stream(server), prompts, long_ids, progress, "llama.cpp")
        ours = measure(our_stream(engine), prompts, long_ids, progress, "ours")

    print(table(ours, theirs, args.streams, args.long_tokens))
    load_end = [round(x, 2) for x in os.getloadavg()]
    print(footer(cpu_description(), cortexstream.kernel_info(), args.threads, load_start, load_end, commit_hash()))
    if args.json:
        report = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": sys.executable.replace(str(Path.home()), "~", 1) + " " + shlex.join(sys.argv),
            "machine": {"cpus": os.cpu_count(), "cpu": cpu_description(), "loadavg": os.getloadavg()},
            "streams": args.streams,
            "long_tokens": args.long_tokens,
            "ours": ours,
            "llama_cpp": theirs,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
