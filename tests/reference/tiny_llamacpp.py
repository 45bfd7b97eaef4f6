"""Writes tests/fixtures/{llama3,mistral,phi3}/llamacpp.json: llama.cpp's greedy output on the tiny
Q8_0 fixtures of `decoder_tiny.py`, which `core/tests/tiny_decoders.rs` holds our decoder to.

For each reference prompt (given as token ids, so both engines see the same ids) llama.cpp's
greedy ids and per-step top-2 log-probabilities (`n_probs: 2`), and the first near tie (see
`gemma3_llamacpp.NEAR_TIE`). llama.cpp currently ignores Phi-3's sliding window, so the Phi-3
prompts and generations stay inside it (15 positions of a 16-position window).

Not run by CI (it needs the peer build): run it by hand after regenerating the fixtures.

    python tests/reference/tiny_llamacpp.py [--bin ~/.cache/cortexstream/peer/build/bin]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from gemma3_llamacpp import NEAR_TIE, first_near_tie, free_port, post, server_flags, wait_ready

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
FILE = "tiny-q8_0.gguf"
# family: (prompt ids kept, tokens generated)
LENGTHS = {"llama3": (None, 16), "mistral": (None, 16), "phi3": (6, 9)}


def complete(port: int, ids: list[int], n_predict: int) -> dict | None:
    """llama-server leaves `completion_probabilities` out of a reply whose text ends inside a
    UTF-8 sequence (random models often emit byte tokens): ask for a few more tokens until it
    has them, and keep the first `n_predict`. `None` when it never does (a model stuck on
    one byte token): that prompt is left out of the fixture."""
    for extra in range(8):
        body = {"prompt": ids, "n_predict": n_predict + extra, "temperature": 0, "n_probs": 2}
        reply = post(port, "/completion", {**body, "cache_prompt": False, "return_tokens": True})
        if len(reply.get("completion_probabilities", [])) >= n_predict:
            reply["completion_probabilities"] = reply["completion_probabilities"][:n_predict]
            return reply
    return None


def one_prompt(port: int, ids: list[int], n_predict: int) -> dict | None:
    reply = complete(port, ids, n_predict)
    if reply is None:
        return None
    steps = []
    for p in reply["completion_probabilities"]:
        top = [{"id": t["id"], "logprob": t["logprob"]} for t in p["top_logprobs"]]
        steps.append({"id": p["id"], "logprob": p["logprob"], "top": top})
    return {
        "prompt_ids": ids,
        "generated_ids": [s["id"] for s in steps],
        "steps": steps,
        "near_tie_at": first_near_tie(steps),
    }


def family_fixture(bin_dir: Path, family: str) -> dict:
    keep, n_predict = LENGTHS[family]
    prompts = json.loads((FIXTURES / family / "reference.json").read_text())["prompts"]
    port = free_port()
    log_fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
    log = Path(log_name)
    command = [
        str(bin_dir / "llama-server"),
        "-m", str(FIXTURES / family / FILE),
        "-t", "1", "-tb", "1",
        "-c", "128",
        "--parallel", "1",
        "--temp", "0",
        *server_flags(bin_dir),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=log_fd, stderr=subprocess.STDOUT)
    os.close(log_fd)
    try:
        wait_ready(port, server, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/props", timeout=10) as r:
            build = json.load(r).get("build_info")
        results = [r for p in prompts if (r := one_prompt(port, p["ids"][:keep], n_predict)) is not None]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.unlink(missing_ok=True)
    return {
        "about": f"llama.cpp greedy reference for core/tests/tiny_decoders.rs; written by tests/reference/tiny_llamacpp.py",
        "model": f"{family}/{FILE}",
        "llama_cpp_build": build,
        "server_flags": command[3:-4],
        "near_tie": NEAR_TIE,
        "prompts": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=Path.home() / ".cache/cortexstream/peer/build/bin")
    args = parser.parse_args()
    for family in LENGTHS:
        fixture = family_fixture(args.bin, family)
        (FIXTURES / family / "llamacpp.json").write_text(json.dumps(fixture, indent=1) + "\n")
        for p in fixture["prompts"]:
            print(family, p["generated_ids"], "near tie at", p["near_tie_at"])


if __name__ == "__main__":
    main()
