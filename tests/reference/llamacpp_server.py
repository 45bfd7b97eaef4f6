"""Shared by the scripts that record llama.cpp's greedy output as fixtures
(`gemma3_llamacpp.py`, `smollm2_requant_llamacpp.py`): start the peer's `llama-server` on a
model, ask it for token ids (`/tokenize`) and greedy completions with top-2 log-probabilities
(`/completion` with `n_probs`), stop it.

Each prompt's record: llama.cpp's prompt token ids (with BOS as `/completion` adds it), its
greedy token ids and, per position, its top log-probabilities (from the raw logits), plus the
first position where those two are a near tie (`near_tie_at`): greedy outputs of two correct
engines may part there, so the Rust tests compare free-running ids only before it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Sequence

DEFAULT_BIN = Path.home() / ".cache/cortexstream/peer/build/bin"
SOURCE = "llama.cpp vendored in the llama-cpp-python 0.3.36 sdist (examples/bench/setup_peer.sh)"


def models_dir() -> Path:
    cache = os.environ.get("CORTEXSTREAM_CACHE")
    root = Path(cache) if cache else Path.home() / ".cache" / "cortexstream"
    return root / "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def wait_ready(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"llama-server exited with {server.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass  # still loading
        time.sleep(0.2)
    sys.exit("llama-server did not become ready")


def server_flags(bin_dir: Path) -> list[str]:
    """`--no-repack` when this build has it: repacked weights change the summation order."""
    help_text = subprocess.run(
        [str(bin_dir / "llama-server"), "--help"], capture_output=True, text=True, check=False
    ).stdout
    return ["--no-repack"] if "--no-repack" in help_text else []


class Server:
    """A running llama-server: its port, its build and the flags it was started with."""

    def __init__(self, port: int, build: str | None, flags: list[str]):
        self.port = port
        self.build = build
        self.flags = flags

    def tokenize(self, text: str) -> list[int]:
        return post(self.port, "/tokenize", {"content": text, "add_special": True})["tokens"]

    def greedy(self, prompt: str, n_predict: int, near_tie: float, n_probs: int) -> dict[str, Any]:
        reply = post(
            self.port,
            "/completion",
            {
                "prompt": prompt,
                "n_predict": n_predict,
                "temperature": 0,
                "n_probs": n_probs,
                "cache_prompt": False,
                "return_tokens": True,
            },
        )
        steps = []
        for p in reply["completion_probabilities"]:
            top = [{"id": t["id"], "logprob": t["logprob"]} for t in p["top_logprobs"]]
            steps.append({"id": p["id"], "logprob": p["logprob"], "top": top})
        generated = [s["id"] for s in steps]
        if reply.get("tokens") and reply["tokens"] != generated[: len(reply["tokens"])]:
            sys.exit(f"{prompt!r}: `tokens` and `completion_probabilities` disagree")
        return {
            "prompt": prompt,
            "prompt_ids": self.tokenize(prompt),
            "generated_ids": generated,
            "steps": steps,
            "stop_type": reply.get("stop_type"),
            "near_tie_at": first_near_tie(steps, near_tie),
            "text": reply["content"],
        }


def first_near_tie(steps: list[dict[str, Any]], near_tie: float) -> int | None:
    for i, step in enumerate(steps):
        top = step["top"]
        if len(top) >= 2 and top[0]["logprob"] - top[1]["logprob"] < near_tie:
            return i
    return None


@contextlib.contextmanager
def serving(bin_dir: Path, model: Path, context: int = 512, extra_flags: Sequence[str] = ()) -> Iterator[Server]:
    """llama-server on `model`: one thread, one slot of `context` positions, greedy, weights as
    the file has them, plus `extra_flags`."""
    port = free_port()
    log_fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
    log = Path(log_name)
    flags = ["-t", "1", "-tb", "1", "-c", str(context), "--parallel", "1", "--temp", "0", *extra_flags, *server_flags(bin_dir)]
    command = [str(bin_dir / "llama-server"), "-m", str(model), *flags, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=log_fd, stderr=subprocess.STDOUT)
    os.close(log_fd)
    try:
        wait_ready(port, server, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/props", timeout=10) as r:
            build = json.load(r).get("build_info")
        yield Server(port, build, flags)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.unlink(missing_ok=True)


def greedy_reference(
    server: Server,
    prompts: list[str],
    n_predict: int,
    near_tie: float,
    tokenize_only: list[str],
    n_probs: int = 2,
) -> dict[str, Any]:
    """The fixture fields both scripts share, from one running server. `n_probs` is how many
    of llama.cpp's top log-probabilities each step records: more than 2 lets a test accept any
    of several near-tied tokens at the first near tie, not just the top two."""
    return {
        "llama_cpp_build": server.build,
        "llama_cpp_source": SOURCE,
        "server_flags": server.flags,
        "near_tie": near_tie,
        "prompts": [server.greedy(p, n_predict, near_tie, n_probs) for p in prompts],
        "tokenize": [{"text": t, "ids": server.tokenize(t)} for t in tokenize_only],
    }


def print_summary(prompts: list[dict[str, Any]]) -> None:
    for p in prompts:
        print(f"{p['prompt']!r}: {len(p['generated_ids'])} ids, near tie at {p['near_tie_at']}: {p['text']!r}")
