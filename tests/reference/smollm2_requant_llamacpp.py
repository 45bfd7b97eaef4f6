"""Writes tests/fixtures/smollm2_requant_llamacpp.json: what llama.cpp makes of the model
cache's SmolLM2-135M-Instruct Q4_1 when its `llama-quantize --allow-requantize` turns it into
Q4_K_M, Q5_K_M, Q6_K and Q8_0, the reference `core/tests/smollm2_requant.rs` holds our
requantizer (`cortexstream::quant::quantize`) and our engine to.

For each preset: the sha256 of llama-quantize's whole output file, every tensor of it (name,
ggml type, dims, sha256 of its data, to say which differ when the file does), and llama.cpp's greedy output on that file (`llamacpp_server.py`: prompt ids, 32 greedy
ids, top-5 log-probabilities per position, first near-tie position). CI never runs llama.cpp:
our requantizer rebuilds the files from the Q4_1 source, and the test checks each tensor
against these hashes before running the engine on them.

SmolLM2's hidden size (576) is not a multiple of 256, so every K-quant choice for a tensor
with 576-value rows falls back (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0); only ffn_down (rows
of 1536) holds K-quants. The fixture records the types each file really has.

Not run by CI (it needs the peer build): run it by hand after changing the prompts or the model.

    python tests/reference/smollm2_requant_llamacpp.py [--bin ~/.cache/cortexstream/peer/build/bin]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import llamacpp_server

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "smollm2_requant_llamacpp.json"
SOURCE_ENTRY = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PRESETS = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
N_PREDICT = 32
N_PROBS = 5
"""Top log-probabilities recorded per step: SmolLM2's distributions are flat, so a near tie is
often among three or more tokens, any of which a correct engine may pick."""
NEAR_TIE = 1.0
"""Top-two log-probability gap under which two correct engines may pick differently. Both
quantize activations to 8 bits before each quantized matmul, each its own way, and this small
model has sensitive positions: measured on these prompts (teacher-forced on llama.cpp's ids,
all four files), a token's log-probability differs by up to 0.58 between llama.cpp and
cortexstream (Q5_K_M, "1, 2, 3, ..." position 1, where a float64 forward on the same
dequantized weights lies between them: llama.cpp 0.23 from it, cortexstream 0.35), and their
picks part at a llama.cpp gap of 0.85 there; every other position differs by at most 0.39. The
Gemma 3 cut (0.35) would call that noise a mismatch; 1.0 keeps a margin above 0.85."""

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "1, 2, 3, 5, 8, 13, 21,",
    "The three primary colors are",
    "Once upon a time, in a small village by the sea, there lived",
]

TOKENIZE_ONLY = [
    "  two leading spaces,  double  spaces\n\n\ttab and trailing   ",
    "Hello 👋🏽 world 🎉🚀",
    "3.14159 1234567890 1,000,000 0x1F 2026-12-05",
    "fn main() {\n    println!(\"{}\", x << 2 >= y && z != 0);\n}",
]
"""Strings whose token ids alone are compared (the vocabulary is the same in every file)."""


def tensor_hashes(path: Path) -> list[dict[str, Any]]:
    """Each tensor of the GGUF at `path`, in file order, with the sha256 of its data."""
    from gguf import GGUFReader  # tests/requirements.txt

    reader = GGUFReader(path)
    return [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "sha256": hashlib.sha256(t.data.tobytes()).hexdigest(),
        }
        for t in reader.tensors
    ]


def requantize(bin_dir: Path, source: Path, out: Path, preset: str) -> None:
    command = [str(bin_dir / "llama-quantize"), "--allow-requantize", str(source), str(out), preset, "1"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=llamacpp_server.DEFAULT_BIN)
    parser.add_argument("--source", type=Path, default=llamacpp_server.models_dir() / SOURCE_ENTRY)
    args = parser.parse_args()
    files: dict[str, Any] = {}
    tokenize: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="smollm2-requant-") as tmp:
        for preset in PRESETS:
            out = Path(tmp) / f"SmolLM2-135M-Instruct.{preset}.gguf"
            requantize(args.bin, args.source, out, preset)
            with llamacpp_server.serving(args.bin, out) as server:
                reference = llamacpp_server.greedy_reference(
                    server, PROMPTS, N_PREDICT, NEAR_TIE, TOKENIZE_ONLY if not tokenize else [], N_PROBS
                )
            tokenize = tokenize or reference.pop("tokenize")
            reference.pop("tokenize", None)
            files[preset] = {
                "file_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                "file_size": out.stat().st_size,
                "tensors": tensor_hashes(out),
                **reference,
            }
            print(f"== {preset}")
            llamacpp_server.print_summary(reference["prompts"])
    fixture = {
        "about": "llama-quantize's output and llama.cpp's greedy reference for core/tests/smollm2_requant.rs; "
        "written by tests/reference/smollm2_requant_llamacpp.py",
        "source": SOURCE_ENTRY,
        "quantize_command": "llama-quantize --allow-requantize SOURCE OUT PRESET 1",
        "tokenize": tokenize,
        "presets": files,
    }
    FIXTURE.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
