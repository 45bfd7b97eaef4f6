"""The llama.cpp side: llama-bench for single-stream decode and prefill, llama-server for
time to first token and concurrent streams. Binaries come from setup_peer.sh."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from machine import peak_rss_bytes
from streams import StreamTiming
from workload import Workload

SERVER_START_TIMEOUT_S = 120.0
SETUP_TIMEOUT_S = 3600
HERE = Path(__file__).resolve().parent

REQUEST_TIMEOUT_S = 900.0


def setup_peer() -> Path:
    """Builds llama.cpp on first use (setup_peer.sh, minutes), then just returns its bin directory."""
    completed = subprocess.run(
        [str(HERE / "setup_peer.sh")], stdout=subprocess.PIPE, check=True, timeout=SETUP_TIMEOUT_S, text=True
    )
    return Path(completed.stdout.strip().splitlines()[-1])


def repack_works(cpu_flags: list[str]) -> bool:
    """Whether llama.cpp's weight repacking ("extra buffer types") can be on: not on CPUs with AMX.

    With AVX2 (and AVX-512) llama.cpp repacks Q4_0, Q4_K and IQ4_NL (Q2_K with AVX-512) into
    interleaved CPU_REPACK layouts and leaves the other types as they are. On CPUs with AMX it
    also moves Q4_1, Q8_0 and the K-quants into its AMX buffer, and that matmul crashed (SIGSEGV
    in ggml_backend_amx_mul_mat) on SmolLM2's 576-wide matrices on a Sapphire Rapids-class CPU:
    there repacking off is its only working configuration.
    """
    return "amx_int8" not in cpu_flags


def best_bench(bin_dir: Path, work: Workload, settings: list[bool]) -> dict[str, Any]:
    """llama-bench once per repacking setting; each rate is the better setting's, and every
    setting's rates are kept. Which one wins depends on the model, the rate and the CPU: on a
    2-core Zen 4 the two were within noise of each other for Gemma 3 and SmolLM2 Q4_K_M, each
    winning some runs (examples/bench/README.md)."""
    runs = {("on" if repack else "off"): bench(bin_dir, work, repack) for repack in settings}
    best: dict[str, Any] = {"bench_by_repack": runs}
    for rate in ("decode_tok_s", "prefill_tok_s"):
        setting = max(runs, key=lambda s: runs[s][rate])
        best[rate], best[f"{rate}_repack"] = runs[setting][rate], setting
    return best


def bench(bin_dir: Path, work: Workload, repack: bool, extra_args: tuple[str, ...] = ()) -> dict[str, float]:
    """llama-bench's own prefill (pp) and decode (tg) rates, averaged over the repeats;
    ``extra_args`` go on its command line (e.g. the KV cache type)."""
    command = [
        str(bin_dir / "llama-bench"),
        "-m",
        work.model,
        "-t",
        str(work.threads),
        "-p",
        str(work.prefill_tokens),
        "-n",
        str(work.decode_tokens),
        "-r",
        str(work.repeats),
        "--repack",
        "1" if repack else "0",
        "-o",
        "json",
        *extra_args,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=900).stdout
    rates = {}
    for test in json.loads(output):
        rates["decode_tok_s" if test["n_gen"] else "prefill_tok_s"] = test["avg_ts"]
    return rates


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LlamaServer:
    """A llama-server with one slot per stream and continuous batching, on a free loopback port;
    a context manager that always stops it."""

    def __init__(self, bin_dir: Path, work: Workload, repack: bool, extra_args: tuple[str, ...] = ()) -> None:
        self.work = work
        self.port = free_loopback_port()
        log_fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        self.log_path = Path(log_name)
        self.process = subprocess.Popen(
            [
                str(bin_dir / "llama-server"),
                "-m",
                work.model,
                "-t",
                str(work.threads),
                "-tb",
                str(work.threads),
                "--parallel",
                str(work.max_streams),
                "--cont-batching",
                *([] if repack else ["--no-repack"]),
                "-c",
                str(work.kv_tokens),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *extra_args,
            ],
            stdout=log_fd,
            stderr=subprocess.STDOUT,
        )
        os.close(log_fd)  # the server holds its own copy

    def __enter__(self) -> Self:
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}:\n{self._log_tail()}")
            try:
                status, _ = self._request("GET", "/health", None, timeout=2)
                if status == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.2)
        raise TimeoutError(f"llama-server not ready after {SERVER_START_TIMEOUT_S:.0f}s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def _request(self, method: str, path: str, body: Any, timeout: float):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(
                method,
                path,
                body=None if body is None else json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes(self.process.pid)

    def stream_completion(self, prompt: str, n_predict: int, json_schema: dict | None = None) -> StreamTiming:
        """One streamed /completion, greedy, ignoring EOS, without prompt caching, timed as
        the client sees it: first token when the first chunk with text (or the end) arrives.
        With ``json_schema``, llama-server constrains the output to it (its own grammar)."""
        body = {
            "prompt": prompt,
            "n_predict": n_predict,
            "ignore_eos": True,
            "temperature": 0.0,
            "cache_prompt": False,
            "stream": True,
            **({} if json_schema is None else {"json_schema": json_schema}),
        }
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            submitted = time.perf_counter()
            connection.request(
                "POST", "/completion", body=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"llama-server /completion: HTTP {response.status} {response.read()[:300]!r}")
            first_token: float | None = None
            for event in _sse_events(response):
                if first_token is None and (event.get("content") or event.get("stop")):
                    first_token = time.perf_counter()
                if event.get("stop"):
                    assert first_token is not None  # set above, at the latest by this very event
                    return StreamTiming(submitted, first_token, time.perf_counter(), event["timings"]["predicted_n"])
            raise RuntimeError("llama-server stream ended without a final chunk")
        finally:
            connection.close()

    def ttft_s(self, prompt: str, repeats: int, json_schema: dict | None = None) -> list[float]:
        """Time to first token of ``prompt`` alone, once per repeat."""
        times = []
        for _ in range(repeats):
            timing = self.stream_completion(prompt, n_predict=1, json_schema=json_schema)
            times.append(timing.first_token - timing.submitted)
        return times


def _sse_events(response: http.client.HTTPResponse):
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: "):
            yield json.loads(line[len("data: ") :])
