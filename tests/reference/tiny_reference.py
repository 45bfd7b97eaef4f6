"""What the tiny random-weight model scripts (`gemma3_tiny.py`, `qwen_tiny.py`) share: the
tokenizer training text and the reference files the Rust checks read
(`core/tests/common/reference.rs`)."""

import json
import pathlib

import numpy as np
import torch


def training_text(prompts, words, seed):
    """Deterministic text for a tiny tokenizer: the prompts plus 400 lines of 12 random words."""
    rng = np.random.default_rng(seed)
    lines = list(prompts)
    for _ in range(400):
        lines.append(" ".join(rng.choice(words, size=12)))
    return lines


def write_reference(out: pathlib.Path, model, texts_and_ids):
    """Runs `model` over each prompt's ids and writes `reference.json` (per prompt: text, ids,
    logits shape) and `reference_logits.f64` (every position's logits, float64 little-endian,
    row-major, prompts in order)."""
    prompts, logits = [], []
    for text, ids in texts_and_ids:
        with torch.no_grad():
            row_logits = model(torch.tensor([ids])).logits[0].numpy().astype("<f8")
        prompts.append({"text": text, "ids": ids, "rows": row_logits.shape[0], "vocab": row_logits.shape[1]})
        logits.append(row_logits)
    (out / "reference.json").write_text(json.dumps({"prompts": prompts}, indent=1) + "\n")
    np.concatenate(logits).tofile(out / "reference_logits.f64")
