#!/usr/bin/env python3
"""Builds the tiny random-weight Qwen 2 and Qwen 3 fixtures and their float64 reference logits.

An independent reference for `core/src/models/qwen.rs`: Hugging Face `transformers`'
`Qwen2ForCausalLM` / `Qwen3ForCausalLM` on tiny configs, converted to GGUF by llama.cpp's own
`convert_hf_to_gguf.py`, with a tiny byte-level BPE tokenizer trained here with Qwen 2's
pre-tokenizer regex.

    LLAMA_CPP=~/.cache/cortexstream/peer/src/llama-cpp-python-0.3.36/vendor/llama.cpp
    python qwen_tiny.py $LLAMA_CPP qwen2 tests/fixtures/qwen2
    python qwen_tiny.py $LLAMA_CPP qwen3 tests/fixtures/qwen3
    python qwen_tiny.py $LLAMA_CPP qwen2 tests/fixtures/qwen2_q4_k_m --q4-k-m $PEER/llama-quantize

needs `torch transformers tokenizers` (not CI: the outputs are committed). Writes into the
output directory the same files as `gemma3_tiny.py`:
- `tiny-f32.gguf`, `tiny-q8_0.gguf`: the converted model;
- `reference.json`: per prompt, its text, the token ids and the shape of its logits;
- `reference_logits.f64`: every prompt's logits at every position, float64 little-endian,
  row-major, prompts in `reference.json` order.

The two models differ where the architectures do: Qwen 2 has Q/K/V biases (random and large
enough to matter) and ties the output head to the embedding (as Qwen 2.5 0.5B does); Qwen 3
has per-head Q/K RMS norms (random weights), no biases, a head size (32) that is not
hidden / heads (16), and its own output head.
"""

import argparse
import pathlib
import runpy
import subprocess
import sys
import tempfile

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from tiny_reference import training_text, write_reference  # noqa: E402

SEED = 4321
VOCAB_SIZE = 384
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen 2's pre-tokenizer split (its tokenizer.json), followed by byte-level mapping.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps near the warm fire.",
    "def add(a, b):\n    return a + b  # 123 456\nprint(add(7, 35))",
    "Qwen keeps biases on queries, keys and values; Qwen 3 normalises each head before RoPE!",
]


WORDS = (
    "the quick brown fox jumps over lazy dog cat sleeps near warm fire keeps biases queries keys "
    "values normalises each head before rope return print add def code number value key query "
    "norm scale base qwen model attention"
).split()


def train_tokenizer():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(PROMPTS, WORDS, SEED), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token=None
    )


def tiny_config(family, eos_id, k_quant):
    # K-quant blocks hold 256 values: rows of 256 and 512 let llama-quantize use them.
    sizes = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2) if k_quant else dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=4)
    common = dict(
        vocab_size=VOCAB_SIZE,
        **sizes,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        use_sliding_window=False,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
    )
    if family == "qwen2":
        return Qwen2Config(tie_word_embeddings=True, **common)
    return Qwen3Config(head_dim=32 if not k_quant else 64, tie_word_embeddings=False, attention_bias=False, **common)


def randomize(model):
    """Weights of a size that gives the logits a real spread (the default init is near zero),
    biases and norm weights large and away from one, so a bias or norm skipped or misapplied
    shows."""
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + noise * 0.3)
            elif name.endswith(".bias"):
                p.copy_(noise * 0.5)
            elif "embed_tokens" in name or "lm_head" in name:
                # Logits' spread about 4 whatever the width (0.5 at hidden 64).
                p.copy_(noise * 4.0 / p.shape[-1] ** 0.5)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)


def rms_norm_in_input_dtype(self, x):
    """transformers' Qwen RMS norms compute in float32 whatever the model dtype: keep float64."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def convert(llama_cpp, hf_dir, outtype, outfile):
    """Runs llama.cpp's converter in this process, with one patch: the converter names a BPE
    pre-tokenizer by hashing the output of the real vocabulary, which a tiny trained one cannot
    reproduce. The tiny tokenizer uses Qwen 2's regex, so it is named `qwen2`, as the real
    Qwen 2.5 and Qwen 3 files are. (Tokenizer correctness for `qwen2` is held by llama.cpp's
    `ggml-vocab-qwen2` test in `core/tests/tokenizer_vocab.rs`.)"""
    sys.path.insert(0, str(llama_cpp))
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(hf_dir), "--outtype", outtype, "--outfile", str(outfile)]
    try:
        runpy.run_path(str(llama_cpp / "convert_hf_to_gguf.py"), run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    finally:
        sys.argv = argv


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("llama_cpp", help="llama.cpp's source tree")
    parser.add_argument("family", choices=["qwen2", "qwen3"])
    parser.add_argument("out_dir")
    parser.add_argument(
        "--q4-k-m",
        metavar="LLAMA_QUANTIZE",
        help="instead: a model wide enough for K-quants (hidden 256, 2 layers), written only as "
        "tiny-q4_k_m.gguf by this llama-quantize binary (the quantization people download)",
    )
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_class = Qwen2ForCausalLM if args.family == "qwen2" else Qwen3ForCausalLM

    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = pathlib.Path(tmp) / f"tiny-{args.family}"
        tokenizer = train_tokenizer()
        tokenizer.save_pretrained(hf_dir)
        model = model_class(tiny_config(args.family, tokenizer.eos_token_id, bool(args.q4_k_m))).to(torch.float64)
        randomize(model)
        model.to(torch.float32).save_pretrained(hf_dir, safe_serialization=True)
        if args.q4_k_m:
            f32 = pathlib.Path(tmp) / "tiny-f32.gguf"
            convert(pathlib.Path(args.llama_cpp), hf_dir, "f32", f32)
            subprocess.run([args.q4_k_m, str(f32), str(out / "tiny-q4_k_m.gguf"), "Q4_K_M"], check=True)
        else:
            for outtype in ["f32", "q8_0"]:
                convert(pathlib.Path(args.llama_cpp), hf_dir, outtype, out / f"tiny-{outtype}.gguf")

        # The reference runs the saved (float32-rounded) weights in float64, as the GGUF holds them.
        modeling_qwen2.Qwen2RMSNorm.forward = rms_norm_in_input_dtype
        modeling_qwen3.Qwen3RMSNorm.forward = rms_norm_in_input_dtype
        model = model_class.from_pretrained(hf_dir, dtype=torch.float64, attn_implementation="eager")
        model.eval()
        texts_and_ids = [(text, tokenizer.encode(text, add_special_tokens=False)) for text in PROMPTS]
        write_reference(out, model, texts_and_ids)

if __name__ == "__main__":
    main()
