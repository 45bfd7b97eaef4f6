"""Writes tests/fixtures/gemma3_llamacpp.json: llama.cpp's greedy output on the real Gemma 3
270M Q4_K_M file, the reference `core/tests/gemma3_real.rs` holds our engine to.

For each raw prompt (no chat template): llama.cpp's prompt token ids (`/tokenize`, with BOS as
`/completion` adds it), its 32 greedy token ids and, per position, its top-2 log-probabilities
(from the raw logits, `n_probs: 2`). Greedy outputs of two correct engines may part where the top
two are a near-tie (see `NEAR_TIE`), so the fixture also records the first such position
(`near_tie_at`); the test compares free-running ids before it, and teacher-forced picks and
log-probabilities at every position.

Not run by CI (it needs the peer build): run it by hand after changing the prompts or the model.

    python tests/reference/gemma3_llamacpp.py [--bin ~/.cache/cortexstream/peer/build/bin]
"""

from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "gemma3_llamacpp.json"
MODEL_ENTRY = "gemma3/gemma-3-270m-q4_k_m.gguf"
N_PREDICT = 32
NEAR_TIE = 0.35
"""Top-two log-probability gap under which two correct engines may pick differently. Both
llama.cpp and cortexstream quantize activations to 8 bits before each quantized matmul, each
in its own way, so their logits differ by more than float rounding: measured on these
prompts (teacher-forced on llama.cpp's ids), a token's log-probability differs by up to 0.31
between them (each is within 0.28 of a float64 forward on the same dequantized weights), and
their greedy picks part at llama.cpp gaps up to 0.28. A 0.05 cut would call that noise a
mismatch; 0.35 keeps a margin above it."""

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "1, 2, 3, 5, 8, 13, 21,",
    "Москва — столица",
    "東京は日本の",
    "Once upon a time, in a small village by the sea, there lived",
]

TOKENIZE_ONLY = [
    "  two leading spaces,  double  spaces\n\n\ttab and trailing   ",
    "Hello 👋🏽 world 🎉🚀",
    "3.14159 1234567890 1,000,000 0x1F 2026-12-05",
    "naïve café — “quotes” ‘single’ … ©®™",
    "안녕하세요 مرحبا بالعالم שלום नमस्ते",
    "fn main() {\n    println!(\"{}\", x << 2 >= y && z != 0);\n}",
]
"""Strings whose token ids alone are compared (whitespace, emoji, digits, punctuation, scripts)."""


def default_model() -> Path:
    cache = os.environ.get("CORTEXSTREAM_CACHE")
    root = Path(cache) if cache else Path.home() / ".cache" / "cortexstream"
    return root / "models" / MODEL_ENTRY


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


@contextlib.contextmanager
def llama_server(
    bin_dir: Path, model: Path, context: int, extra_flags: Sequence[str] = ()
) -> Iterator[tuple[int, list[str]]]:
    """A greedy, single-threaded llama-server on `model`, stopped on exit: yields its port and
    the flags it was started with (for the fixture's record)."""
    port = free_port()
    log_fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
    log = Path(log_name)
    flags = [
        "-t", "1", "-tb", "1",
        "-c", str(context),
        "--parallel", "1",
        "--temp", "0",
        *extra_flags,
        *server_flags(bin_dir),
    ]  # fmt: skip
    command = [str(bin_dir / "llama-server"), "-m", str(model), *flags, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=log_fd, stderr=subprocess.STDOUT)
    os.close(log_fd)
    try:
        wait_ready(port, server, log)
        yield port, flags
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.unlink(missing_ok=True)


def first_near_tie(steps: list[dict[str, Any]]) -> int | None:
    for i, step in enumerate(steps):
        top = step["top"]
        if len(top) >= 2 and top[0]["logprob"] - top[1]["logprob"] < NEAR_TIE:
            return i
    return None


def one_prompt(port: int, prompt: str) -> dict[str, Any]:
    prompt_ids = post(port, "/tokenize", {"content": prompt, "add_special": True})["tokens"]
    reply = post(
        port,
        "/completion",
        {
            "prompt": prompt,
            "n_predict": N_PREDICT,
            "temperature": 0,
            "n_probs": 2,
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
        "prompt_ids": prompt_ids,
        "generated_ids": generated,
        "steps": steps,
        "stop_type": reply.get("stop_type"),
        "near_tie_at": first_near_tie(steps),
        "text": reply["content"],
    }


def build_info(port: int) -> Any:
    """The running llama-server's build, for the fixture's record."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/props", timeout=10) as r:
        return json.load(r).get("build_info")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=Path.home() / ".cache/cortexstream/peer/build/bin")
    parser.add_argument("--model", type=Path, default=default_model())
    args = parser.parse_args()
    with llama_server(args.bin, args.model, 512) as (port, flags):
        fixture = {
            "about": "llama.cpp greedy reference for core/tests/gemma3_real.rs; written by tests/reference/gemma3_llamacpp.py",
            "model": MODEL_ENTRY,
            "llama_cpp_build": build_info(port),
            "llama_cpp_source": "llama.cpp vendored in the llama-cpp-python 0.3.36 sdist (examples/bench/setup_peer.sh)",
            "server_flags": flags,
            "near_tie": NEAR_TIE,
            "prompts": [one_prompt(port, p) for p in PROMPTS],
            "tokenize": [
                {"text": t, "ids": post(port, "/tokenize", {"content": t, "add_special": True})["tokens"]}
                for t in TOKENIZE_ONLY
            ],
        }
    FIXTURE.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    for p in fixture["prompts"]:
        print(f"{p['prompt']!r}: {len(p['generated_ids'])} ids, near tie at {p['near_tie_at']}: {p['text']!r}")


if __name__ == "__main__":
    main()
