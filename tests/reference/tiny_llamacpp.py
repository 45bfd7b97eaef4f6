#!/usr/bin/env python3
"""Writes `tests/fixtures/{family}/llamacpp.json`: llama.cpp's greedy continuation of each
reference prompt of a tiny random-weight fixture (`tests/fixtures/{family}/reference.json`,
made by `decoder_tiny.py` or `gemma3_tiny.py`), on the same converted GGUFs our engine
loads (every `tiny-*.gguf` there). `check_llamacpp_agreement` in
`core/tests/common/reference.rs` holds our forward to it (`core/tests/tiny_decoders.rs`,
`qwen_reference.rs`, `gemma3_reference.rs`), and the engine tests (`tiny_decoders.rs`, `qwen_engine.rs`) our greedy
tokens.

The prompts go in as token ids (so the comparison is of the forward, not the tokenizer). Per
file and prompt (llama.cpp checked to evaluate exactly the ids given, adding no BOS): its
greedy ids (`N_PREDICT`, or the family's entry in `PROMPT_LENGTHS`) and, per step, its top-2
log-probabilities (`n_probs: 2`, one request per step; `null` where the server withholds them,
see `top_two`). The test decides per file type which gaps are near ties (F32 engines agree far
more closely than 8-bit ones).

Context 256 for every family: Phi-3's LongRoPE original length, below which llama.cpp uses the
short factors as we do (the other families' results do not depend on it).

Not run by CI (it needs the peer build): run it by hand after changing a tiny model.

    python tests/reference/tiny_llamacpp.py gemma3 llama3 mistral phi3 qwen2 qwen3 qwen2_q4_k_m \
        [--bin ~/.cache/cortexstream/peer/build/bin]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llamacpp_server import post, serving  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
N_PREDICT = 16
# family: (prompt ids kept, tokens generated). llama.cpp ignores Phi-3's sliding window (16
# positions), so the Phi-3 prompts and generations stay inside it (15 positions).
PROMPT_LENGTHS = {"phi3": (6, 9)}


def completion(port: int, ids: list[int], n_predict: int) -> dict[str, Any]:
    body = {"prompt": ids, "n_predict": n_predict, "temperature": 0, "n_probs": 2, "cache_prompt": False}
    reply = post(port, "/completion", {**body, "return_tokens": True})
    if reply["tokens_evaluated"] != len(ids):
        sys.exit(f"llama.cpp evaluated {reply['tokens_evaluated']} tokens of {len(ids)}: it added or dropped some")
    return reply


def top_two(port: int, ids: list[int]) -> list[dict[str, Any]] | None:
    """llama.cpp's top-2 log-probabilities after `ids`, or None when it withholds them: the
    server reports no probabilities for a token that ends inside a UTF-8 character (a random
    model emits such byte tokens). One token per request, so no other step's are lost."""
    probabilities = completion(port, ids, 1).get("completion_probabilities") or []
    if not probabilities:
        return None
    return [{"id": t["id"], "logprob": t["logprob"]} for t in probabilities[0]["top_logprobs"]]


def one_prompt(port: int, ids: list[int], n_predict: int) -> dict[str, Any]:
    generated = completion(port, ids, n_predict)["tokens"]
    if len(generated) != n_predict:
        sys.exit(f"{ids}: llama.cpp generated {len(generated)} tokens, not {n_predict}")
    steps = [{"id": g, "top": top_two(port, ids + generated[:i])} for i, g in enumerate(generated)]
    for step in steps:
        if step["top"] is not None and step["top"][0]["id"] != step["id"]:
            sys.exit(f"{ids}: the single-step pick disagrees with the greedy run at {step}")
    return {"prompt_ids": ids, "generated_ids": generated, "steps": steps}


def run_file(bin_dir: Path, model: Path, prompts: list[list[int]], n_predict: int) -> dict[str, Any]:
    # Generate through end-of-text: a random model may pick it, and the check is of logits.
    with serving(bin_dir, model, 256, ["--ignore-eos"]) as server:
        return {"server_flags": server.flags, "prompts": [one_prompt(server.port, ids, n_predict) for ids in prompts]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="+")
    parser.add_argument("--bin", type=Path, default=Path.home() / ".cache/cortexstream/peer/build/bin")
    args = parser.parse_args()
    for family in args.families:
        directory = REPO / "tests" / "fixtures" / family
        reference = json.loads((directory / "reference.json").read_text())
        keep, n_predict = PROMPT_LENGTHS.get(family, (None, N_PREDICT))
        prompts = [p["ids"][:keep] for p in reference["prompts"]]
        fixture = {
            "about": f"llama.cpp greedy reference on the tiny {family} fixtures; written by tests/reference/tiny_llamacpp.py",
            "llama_cpp_source": "llama.cpp vendored in the llama-cpp-python 0.3.36 sdist (examples/bench/setup_peer.sh)",
            "files": {path.name: run_file(args.bin, path, prompts, n_predict) for path in sorted(directory.glob("tiny-*.gguf"))},
        }
        (directory / "llamacpp.json").write_text(json.dumps(fixture, indent=1) + "\n")
        for file, result in fixture["files"].items():
            for p in result["prompts"]:
                print(f"{family}/{file}: {p['generated_ids']}")


if __name__ == "__main__":
    main()
