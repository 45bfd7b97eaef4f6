"""Writes tests/fixtures/{llama3,mistral,phi3}/llamacpp.json: llama.cpp's greedy output on the tiny
Q8_0 fixtures of `decoder_tiny.py`, which `core/tests/tiny_decoders.rs` holds our decoder to.

For each reference prompt (given as token ids, so both engines see the same ids) llama.cpp's
greedy ids and, teacher-forced one step at a time, its pick and top-2 log-probabilities
(`n_probs: 2`; `null` where llama-server withholds them, see `step_probabilities`). llama.cpp currently ignores Phi-3's sliding window, so the Phi-3
prompts and generations stay inside it (15 positions of a 16-position window).

Not run by CI (it needs the peer build): run it by hand after regenerating the fixtures.

    python tests/reference/tiny_llamacpp.py [--bin ~/.cache/cortexstream/peer/build/bin]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llamacpp_server import post, serving

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
FILE = "tiny-q8_0.gguf"
# family: (prompt ids kept, tokens generated, context): Phi-3's context stays at its LongRoPE
# original 256 positions, where llama.cpp uses the short factors as we do.
LENGTHS = {"llama3": (None, 16, 128), "mistral": (None, 16, 128), "phi3": (6, 9, 256)}


def completion(port: int, ids: list[int], n_predict: int) -> dict:
    body = {"prompt": ids, "n_predict": n_predict, "temperature": 0, "n_probs": 2}
    return post(port, "/completion", {**body, "cache_prompt": False, "return_tokens": True})


def step_probabilities(port: int, ids: list[int]) -> dict | None:
    """llama.cpp's pick and top-2 log-probabilities after `ids`, or `None` when llama-server
    withholds them: it leaves out the probabilities of a token whose text ends inside a UTF-8
    sequence (random models often pick byte tokens), which is also why they are asked for one
    step at a time: in a longer reply the list skips such tokens and no longer lines up with
    the generated ids."""
    probabilities = completion(port, ids, 1).get("completion_probabilities")
    if not probabilities:
        return None
    p = probabilities[0]
    return {"id": p["id"], "logprob": p["logprob"], "top": [{"id": t["id"], "logprob": t["logprob"]} for t in p["top_logprobs"]]}


def one_prompt(port: int, ids: list[int], n_predict: int) -> dict:
    generated = completion(port, ids, n_predict)["tokens"]
    steps = [step_probabilities(port, ids + generated[:i]) for i in range(len(generated))]
    for i, step in enumerate(steps):
        if step is not None and step["id"] != generated[i]:
            raise SystemExit(f"{ids}: step {i} picks {step['id']} alone but {generated[i]} in the generation")
    return {"prompt_ids": ids, "generated_ids": generated, "steps": steps}


def family_fixture(bin_dir: Path, family: str) -> dict:
    keep, n_predict, context = LENGTHS[family]
    prompts = json.loads((FIXTURES / family / "reference.json").read_text())["prompts"]
    with serving(bin_dir, FIXTURES / family / FILE, context) as server:
        port = server.port
        return {
            "about": "llama.cpp greedy reference for core/tests/tiny_decoders.rs; written by tests/reference/tiny_llamacpp.py",
            "model": f"{family}/{FILE}",
            "llama_cpp_build": server.build,
            "server_flags": server.flags,
            "prompts": [one_prompt(port, p["ids"][:keep], n_predict) for p in prompts],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=Path.home() / ".cache/cortexstream/peer/build/bin")
    args = parser.parse_args()
    for family in LENGTHS:
        fixture = family_fixture(args.bin, family)
        (FIXTURES / family / "llamacpp.json").write_text(json.dumps(fixture, indent=1) + "\n")
        for p in fixture["prompts"]:
            withheld = sum(step is None for step in p["steps"])
            print(family, p["generated_ids"], f"{withheld} steps without probabilities")


if __name__ == "__main__":
    main()
