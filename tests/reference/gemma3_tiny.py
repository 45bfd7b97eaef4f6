#!/usr/bin/env python3
"""Builds the tiny random-weight Gemma 3 fixture and its float64 reference logits.

An independent reference for `core/src/models/gemma3.rs`: Hugging Face `transformers`'
`Gemma3ForCausalLM` on a tiny `Gemma3TextConfig` (6 layers: llama.cpp's and transformers'
default pattern makes layers 0-4 sliding-window and layer 5 global; a window of 8 positions
so it matters in the ~40-token prompts), converted to GGUF by llama.cpp's own
`convert_hf_to_gguf.py`, with a tiny SentencePiece tokenizer (byte fallback) trained here.

    python gemma3_tiny.py $LLAMA_CPP/convert_hf_to_gguf.py tests/fixtures/gemma3

needs `torch transformers sentencepiece` (the shared steps are in `tiny_reference.py`) (not CI: the outputs are committed). Writes into the
output directory:
- `tiny-f32.gguf`, `tiny-q8_0.gguf`: the converted model;
- `reference.json`: per prompt, its text, the SentencePiece ids (BOS first) and the shape of
  its logits;
- `reference_logits.f64`: every prompt's logits at every position, float64 little-endian,
  row-major, prompts in `reference.json` order.
"""

import argparse
import pathlib
import sys
import tempfile

import sentencepiece as spm
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig
from transformers.models.gemma3 import modeling_gemma3

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import tiny_reference as tiny  # noqa: E402

SEED = 1234

PROMPTS = tiny.SHARED_PROMPTS + [
    "Gemma runs sliding windows: tokens far back fall out of the window, global layers keep them all.",
]


WORDS = (
    "the quick brown fox jumps over lazy dog cat sleeps near warm fire window sliding global "
    "layers tokens keep them all far back fall out of runs model attention return print add "
    "def code number value key query head norm scale rope base"
).split()


def train_tokenizer(path):
    lines = tiny.training_text(PROMPTS, WORDS, SEED)
    tiny.train_sentencepiece(lines, path, pad_id=0, eos_id=1, bos_id=2, unk_id=3, add_dummy_prefix=False)


def tiny_config():
    return Gemma3TextConfig(
        vocab_size=tiny.VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        # llama.cpp scales attention by 1/sqrt(head_dim) (the GGUF has no key for this).
        query_pre_attn_scalar=16,
        sliding_window=8,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def rms_norm_in_input_dtype(self, x):
    """transformers' Gemma3RMSNorm computes in float32 whatever the model dtype: keep float64."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("converter", help="llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = pathlib.Path(tmp) / "tiny-gemma3"
        hf_dir.mkdir()
        train_tokenizer(hf_dir / "tokenizer.model")
        model = Gemma3ForCausalLM(tiny_config()).to(torch.float64)
        tiny.randomize(model, SEED, tiny.default_weight)
        model.to(torch.float32).save_pretrained(hf_dir, safe_serialization=True)
        for outtype in ["f32", "q8_0"]:
            tiny.convert(args.converter, hf_dir, outtype, out / f"tiny-{outtype}.gguf")

        # The reference runs the saved (float32-rounded) weights in float64, as the GGUF holds them.
        modeling_gemma3.Gemma3RMSNorm.forward = rms_norm_in_input_dtype
        model = Gemma3ForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float64, attn_implementation="eager")
        model.eval()
        tokenizer = spm.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
        texts_and_ids = [(text, [tokenizer.bos_id()] + tokenizer.encode(text)) for text in PROMPTS]
        prompts, logits = tiny.reference_logits(model, texts_and_ids)
    tiny.write_reference(out, prompts, logits)


if __name__ == "__main__":
    main()
