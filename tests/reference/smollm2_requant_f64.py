"""Writes `tests/fixtures/smollm2_requant_f64.json`: for each of the four requantized SmolLM2
files, a float64 forward (`llama_f64.py`: numpy, weights dequantized by the `gguf` package,
independent of our code and of llama.cpp), teacher-forced on each prompt of
`smollm2_requant_llamacpp.json` plus llama.cpp's first greedy ids, keeping per position the
float64 top-5 ids and their log-probabilities. `core/tests/smollm2_requant.rs` holds our engine
to it far more tightly than the llama.cpp comparison allows (that one carries both engines'
8-bit activation rounding). A few minutes.

The files are the ones `core/tests/smollm2_requant.rs` writes into the model cache (run it
first); they are byte for byte llama-quantize's, so the peer's own output serves as well:

    python tests/reference/smollm2_requant_f64.py [--dir DIR_WITH_THE_FOUR_FILES]
"""

import argparse
import json
from pathlib import Path

import numpy as np

import llamacpp_server
from llama_f64 import Model

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "smollm2_requant_f64.json"
POSITIONS = 16  # next-token positions per prompt (at most): the prompt's last token plus 15 greedy ids
TOP = 5


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def prompt_reference(model, prompt):
    """Float64 top-TOP `(id, logprob)` after each prefix prompt_ids + generated_ids[:i]."""
    positions = min(POSITIONS, len(prompt["generated_ids"]))  # llama.cpp may have stopped early
    ids = prompt["prompt_ids"] + prompt["generated_ids"][: positions - 1]
    lp = log_softmax(model.forward(np.array(ids)))
    rows = []
    for i in range(positions):
        row = lp[len(prompt["prompt_ids"]) - 1 + i]
        top = np.argsort(-row)[:TOP]
        rows.append([{"id": int(t), "logprob": round(float(row[t]), 5)} for t in top])
    return {"prompt": prompt["prompt"], "ids": ids, "prompt_len": len(prompt["prompt_ids"]), "top": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=llamacpp_server.models_dir() / "smollm2-requant")
    args = parser.parse_args()
    llamacpp = json.loads((REPO / "tests" / "fixtures" / "smollm2_requant_llamacpp.json").read_text())
    presets = {}
    for preset, entry in llamacpp["presets"].items():
        model = Model(str(args.dir / f"SmolLM2-135M-Instruct.{preset}.gguf"))
        presets[preset] = {"prompts": [prompt_reference(model, p) for p in entry["prompts"]]}
        print("done", preset, flush=True)
    out = {
        "about": "float64 numpy forward of the requantized SmolLM2 files for core/tests/smollm2_requant.rs; "
        "written by tests/reference/smollm2_requant_f64.py",
        "presets": presets,
    }
    FIXTURE.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print("wrote", FIXTURE, FIXTURE.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
