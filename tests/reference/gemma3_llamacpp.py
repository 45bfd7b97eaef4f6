"""Writes tests/fixtures/gemma3_llamacpp.json: llama.cpp's greedy output on the real Gemma 3
270M Q4_K_M file, the reference `core/tests/gemma3_real.rs` holds our engine to.

For each raw prompt (no chat template): llama.cpp's prompt token ids (`/tokenize`, with BOS as
`/completion` adds it), its 32 greedy token ids and, per position, its top-2 log-probabilities
(from the raw logits, `n_probs: 2`), and the first near-tie position (see `llamacpp_server.py`,
shared with `smollm2_requant_llamacpp.py`); the test compares free-running ids before it, and
teacher-forced picks and log-probabilities at every position.

Not run by CI (it needs the peer build): run it by hand after changing the prompts or the model.

    python tests/reference/gemma3_llamacpp.py [--bin ~/.cache/cortexstream/peer/build/bin]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import llamacpp_server

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=llamacpp_server.DEFAULT_BIN)
    parser.add_argument("--model", type=Path, default=llamacpp_server.models_dir() / MODEL_ENTRY)
    args = parser.parse_args()
    with llamacpp_server.serving(args.bin, args.model) as server:
        reference = llamacpp_server.greedy_reference(server, PROMPTS, N_PREDICT, NEAR_TIE, TOKENIZE_ONLY)
    fixture = {
        "about": "llama.cpp greedy reference for core/tests/gemma3_real.rs; written by tests/reference/gemma3_llamacpp.py",
        "model": MODEL_ENTRY,
        **reference,
    }
    FIXTURE.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
    llamacpp_server.print_summary(fixture["prompts"])


if __name__ == "__main__":
    main()
