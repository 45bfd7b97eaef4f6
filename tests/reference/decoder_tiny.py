#!/usr/bin/env python3
"""Builds the tiny random-weight Llama 3, Mistral, Phi-3, Qwen 2 and Qwen 3 fixtures and their
float64 reference logits: an independent reference for `core/src/models/llama.rs` (with Llama 3
RoPE scaling), `core/src/models/phi3.rs` and `core/src/models/qwen.rs`.

Each family is Hugging Face `transformers`' own model class on a tiny config, converted to GGUF
by llama.cpp's own `convert_hf_to_gguf.py`, with a tiny tokenizer trained here:

- `llama3`: `LlamaForCausalLM` with `rope_scaling` of type `llama3` and an
  `original_max_position_embeddings` of 16, so that the ~40-token prompts reach the scaled
  frequencies (the converter turns it into the `rope_freqs.weight` tensor), tied embeddings, and
  a byte-level BPE tokenizer with Llama 3's pre-tokenizer regex. The converter names a BPE
  pre-tokenizer by hashing the real vocabulary's output, which a tiny trained vocabulary cannot
  match: the script tells it the name (`llama-bpe`, whose regex the tokenizer was trained with).
  Tokenizer correctness for `llama-bpe` itself is held by `core/tests/tokenizer_vocab.rs`.
  `reference_unscaled_logits.f64` holds the first prompt's logits of the same weights *without*
  the scaling, so the test can show that the scaling changes the result (phi3 too; see
  `OTHER_ROPE`).
- `mistral`: `MistralForCausalLM` with a SentencePiece tokenizer and `sliding_window` = 4096 (as in
  Mistral 7B v0.1). The converter writes no sliding window for the llama architecture (the script
  checks that), so the GGUF, like llama.cpp, attends over the whole context; the prompts are
  far shorter than the window, where the two agree. `reference_linear2_logits.f64`: the first
  prompt with linear RoPE scaling of factor 2, which the test asks of the same file by adding
  `llama.rope.scaling.*` keys.
- `phi3`: `Phi3ForCausalLM` (fused QKV and gate-up projections) with a SentencePiece tokenizer,
  a `sliding_window` of 16 (Phi-3 mini's is 2047), which the converter writes as
  `phi3.attention.sliding_window`, short enough that the window matters in the prompts, and
  Phi-3.5-style LongRoPE (see `PHI3_ROPE`), which it writes as `rope_factors_{short,long}.weight`
  and `phi3.rope.scaling.attn_factor`.
- `qwen2`, `qwen3`: `Qwen2ForCausalLM` / `Qwen3ForCausalLM` with a byte-level BPE tokenizer
  trained with Qwen 2's pre-tokenizer regex (named `qwen2` for the converter, as the real
  Qwen 2.5 and Qwen 3 files are; held by llama.cpp's `ggml-vocab-qwen2` test), RoPE base 10^6
  and their own seed, prompts and weight scales (`qwen_weight`). They differ where the
  architectures do: Qwen 2 has Q/K/V biases (random and large enough to matter) and ties the
  output head to the embedding (as Qwen 2.5 0.5B does); Qwen 3 has per-head Q/K RMS norms
  (random weights), no biases, a head size (32) that is not hidden / heads (16), and its own
  output head. `--q4-k-m` instead builds a Qwen 2 wide enough for K-quants (hidden 256, 2
  layers) and writes it only as `tiny-q4_k_m.gguf`, quantized by llama.cpp's `llama-quantize`
  (the quantization people download).

    LLAMA_CPP=~/.cache/cortexstream/peer/src/llama-cpp-python-0.3.36/vendor/llama.cpp
    python decoder_tiny.py FAMILY $LLAMA_CPP/convert_hf_to_gguf.py tests/fixtures/FAMILY
    python decoder_tiny.py qwen2 $LLAMA_CPP/convert_hf_to_gguf.py tests/fixtures/qwen2_q4_k_m \
        --q4-k-m ~/.cache/cortexstream/peer/build/bin/llama-quantize

for FAMILY in llama3, mistral, phi3, qwen2, qwen3; needs `torch transformers sentencepiece
tokenizers` (not CI: the outputs are committed; the steps shared with `gemma3_tiny.py` are in
`tiny_reference.py`). Writes into the output directory, as `gemma3_tiny.py` does:
`tiny-f32.gguf`, `tiny-q8_0.gguf`, `reference.json` (per prompt: text, token ids, logits shape)
and `reference_logits.f64` (every prompt's logits at every position, float64 little-endian,
row-major).
"""

import argparse
import dataclasses
import functools
import importlib
import json
import pathlib
import subprocess
import sys
import tempfile
from typing import Callable

import sentencepiece as spm
import torch
import transformers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import tiny_reference as tiny  # noqa: E402

LLAMA_SEED = 1234

LLAMA_PROMPTS = tiny.SHARED_PROMPTS + [
    "Long context models scale rotary frequencies: tokens far back keep their order, near ones their detail.",
]

LLAMA_WORDS = (
    "the quick brown fox jumps over lazy dog cat sleeps near warm fire window sliding global "
    "layers tokens keep them all far back fall out of runs model attention return print add "
    "def code number value key query head norm scale rope base long context rotary frequencies "
    "order near ones detail"
).split()

# Llama 3's pre-tokenizer regex (tokenizer.json of Llama 3.x), which llama.cpp names `llama-bpe`.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN_SEED = 4321

QWEN_PROMPTS = tiny.SHARED_PROMPTS + [
    "Qwen keeps biases on queries, keys and values; Qwen 3 normalises each head before RoPE!",
]

QWEN_WORDS = (
    "the quick brown fox jumps over lazy dog cat sleeps near warm fire keeps biases queries keys "
    "values normalises each head before rope return print add def code number value key query "
    "norm scale base qwen model attention"
).split()

# Qwen 2's pre-tokenizer split (its tokenizer.json), followed by byte-level mapping.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_EOS_ID = 0


def train_sentencepiece(hf_dir, lines, user_defined_symbols=()):
    """A Llama-style SentencePiece model (unk 0, BOS 1, EOS 2, byte fallback, dummy prefix)."""
    tiny.train_sentencepiece(
        lines,
        hf_dir / "tokenizer.model",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        user_defined_symbols=list(user_defined_symbols),
    )
    processor = spm.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    return processor.get_piece_size(), lambda text: [processor.bos_id()] + processor.encode(text)


def train_llama3_bpe(hf_dir, lines):
    """A byte-level BPE with Llama 3's regex and its BOS/EOS names, saved as tokenizer.json."""
    from tokenizers import processors

    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    tokenizer = tiny.train_byte_level_bpe(lines, LLAMA3_PATTERN, [bos, eos])
    bos_id = tokenizer.token_to_id(bos)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos)
    fast.save_pretrained(hf_dir)
    config_path = hf_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["add_bos_token"] = True  # read by the converter into tokenizer.ggml.add_bos_token
    config_path.write_text(json.dumps(config, indent=1))
    return tokenizer.get_vocab_size(), lambda text: tokenizer.encode(text).ids


def train_qwen_bpe(hf_dir, lines):
    """A byte-level BPE with Qwen 2's regex and its special tokens (end-of-text first, so id 0;
    no BOS), saved as tokenizer.json."""
    tokenizer = tiny.train_byte_level_bpe(lines, QWEN2_SPLIT, QWEN_SPECIAL_TOKENS)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token=None
    )
    assert fast.eos_token_id == QWEN_EOS_ID
    fast.save_pretrained(hf_dir)
    return tokenizer.get_vocab_size(), lambda text: fast.encode(text, add_special_tokens=False)


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10_000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def common_config(vocab_size, bos, eos):
    return dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=None,
    )


def llama3_config(vocab_size, rope=LLAMA3_ROPE):
    return transformers.LlamaConfig(
        **common_config(vocab_size, 0, 1), max_position_embeddings=128, tie_word_embeddings=True, rope_parameters=dict(rope)
    )


def mistral_config(vocab_size, rope=None):
    return transformers.MistralConfig(
        **common_config(vocab_size, 1, 2),
        max_position_embeddings=256,
        sliding_window=4096,
        tie_word_embeddings=False,
        rope_parameters=rope or {"rope_type": "default", "rope_theta": 1_000_000.0},
    )


# Phi-3.5-mini style LongRoPE: a context extended 4x from an original 256 positions (the
# converter writes the attention factor sqrt(1 + ln 4 / ln 256)). The prompts stay under 256
# positions, where the short factors apply (llama.cpp pads its context to a multiple of 256 and
# picks the long factors for a context beyond the original one, so a smaller original length
# would not let it run the short ones).
PHI3_ROPE = {
    "rope_type": "longrope",
    "rope_theta": 10_000.0,
    "short_factor": [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0],
    "long_factor": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
    "original_max_position_embeddings": 256,
}


def phi3_config(vocab_size, rope=PHI3_ROPE):
    return transformers.Phi3Config(
        **common_config(vocab_size, 1, 2),
        max_position_embeddings=1024,
        original_max_position_embeddings=rope.get("original_max_position_embeddings", 1024),
        sliding_window=16,
        tie_word_embeddings=False,
        rope_parameters=dict(rope),
    )


def qwen_config(family, vocab_size, rope=None, k_quant=False):
    # K-quant blocks hold 256 values: rows of 256 and 512 let llama-quantize use them.
    sizes = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2) if k_quant else dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=4)
    common = dict(
        vocab_size=vocab_size,
        **sizes,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        use_sliding_window=False,
        eos_token_id=QWEN_EOS_ID,
        bos_token_id=QWEN_EOS_ID,
    )
    if family == "qwen2":
        return transformers.Qwen2Config(tie_word_embeddings=True, **common)
    return transformers.Qwen3Config(
        head_dim=32 if not k_quant else 64, tie_word_embeddings=False, attention_bias=False, **common
    )


def qwen_weight(name, p, noise):
    """Biases and norm weights large and away from one, so a bias or norm skipped or misapplied
    shows; embedding and head scaled for logits with a spread of about 4 whatever the width."""
    if name.endswith("norm.weight"):
        return 1.0 + noise * 0.3
    if name.endswith(".bias"):
        return noise * 0.5
    if "embed_tokens" in name or "lm_head" in name:
        return noise * 4.0 / p.shape[-1] ** 0.5
    return noise / p.shape[-1] ** 0.5


@dataclasses.dataclass(frozen=True)
class Family:
    model_class: type
    # (vocab_size, rope=None[, k_quant]) -> config; `rope` replaces the RoPE parameters.
    make_config: Callable
    # (hf_dir, training lines) -> (vocab size, text -> ids as the reference runs them).
    train_tokenizer: Callable
    # The pre-tokenizer name the converter writes for a trained BPE vocabulary (see `tiny_reference.convert`).
    bpe_pre: str | None
    seed: int
    prompts: list
    words: list
    # `tiny_reference.randomize`'s weight per parameter.
    weight: Callable
    # Queries, keys and head scaled up after `tiny_reference.randomize` (see `sharpen`).
    sharpened: bool
    # The first prompt's logits of the same weights with other RoPE parameters:
    # `reference_{name}_logits.f64`.
    other_rope: dict = dataclasses.field(default_factory=dict)


LLAMA_FAMILY = dict(seed=LLAMA_SEED, prompts=LLAMA_PROMPTS, words=LLAMA_WORDS, weight=tiny.default_weight, sharpened=True)
QWEN_FAMILY = dict(
    bpe_pre="qwen2", seed=QWEN_SEED, prompts=QWEN_PROMPTS, words=QWEN_WORDS, weight=qwen_weight, sharpened=False
)

FAMILIES = {
    "llama3": Family(
        transformers.LlamaForCausalLM,
        llama3_config,
        train_llama3_bpe,
        bpe_pre="llama-bpe",
        other_rope={"unscaled": {"rope_type": "default", "rope_theta": LLAMA3_ROPE["rope_theta"]}},
        **LLAMA_FAMILY,
    ),
    "mistral": Family(
        transformers.MistralForCausalLM,
        mistral_config,
        train_sentencepiece,
        bpe_pre=None,
        # Linear scaling, which the Rust test asks of the same GGUF through `rope.scaling.*` keys.
        other_rope={"linear2": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0}},
        **LLAMA_FAMILY,
    ),
    # llama.cpp refuses a Phi-3 vocabulary without `<|endoftext|>` (it sets that token's attributes).
    "phi3": Family(
        transformers.Phi3ForCausalLM,
        phi3_config,
        functools.partial(train_sentencepiece, user_defined_symbols=["<|endoftext|>"]),
        bpe_pre=None,
        other_rope={"unscaled": {"rope_type": "default", "rope_theta": PHI3_ROPE["rope_theta"]}},
        **LLAMA_FAMILY,
    ),
    "qwen2": Family(
        transformers.Qwen2ForCausalLM, functools.partial(qwen_config, "qwen2"), train_qwen_bpe, **QWEN_FAMILY
    ),
    "qwen3": Family(
        transformers.Qwen3ForCausalLM, functools.partial(qwen_config, "qwen3"), train_qwen_bpe, **QWEN_FAMILY
    ),
}


def sharpen(model, config):
    """Queries and keys 3x and the output head 4x the default scale: attention that is not near
    uniform (so positions, RoPE frequencies and the window change the result clearly) and logits
    with a spread of a few units (so top-1 has clear gaps to check)."""
    q_and_k = (config.num_attention_heads + config.num_key_value_heads) * (config.hidden_size // config.num_attention_heads)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(3.0)
            elif name.endswith("qkv_proj.weight"):
                p[:q_and_k].mul_(3.0)
            elif name.startswith("lm_head"):
                p.mul_(4.0)


def keep_norms_in_float64():
    """transformers' RMS norms compute in float32 whatever the model dtype: patched to keep the
    reference in float64."""
    for module, norm in [("llama", "Llama"), ("mistral", "Mistral"), ("phi3", "Phi3"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3")]:
        modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
        getattr(modeling, f"{norm}RMSNorm").forward = tiny.rms_norm_in_input_dtype


def write_ggufs(family, converter, hf_dir, out, quantize):
    """`tiny-f32.gguf` and `tiny-q8_0.gguf`, or with `quantize` (llama-quantize) only
    `tiny-q4_k_m.gguf`, converted from `hf_dir`."""
    if quantize:
        f32 = hf_dir.parent / "tiny-f32.gguf"
        tiny.convert(converter, hf_dir, "f32", f32, family.bpe_pre)
        subprocess.run([quantize, str(f32), str(out / "tiny-q4_k_m.gguf"), "Q4_K_M"], check=True)
        return
    for outtype in ["f32", "q8_0"]:
        tiny.convert(converter, hf_dir, outtype, out / f"tiny-{outtype}.gguf", family.bpe_pre)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("converter", help="llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument("out_dir")
    parser.add_argument(
        "--q4-k-m",
        metavar="LLAMA_QUANTIZE",
        help="qwen2 only, instead: a model wide enough for K-quants (hidden 256, 2 layers), written "
        "only as tiny-q4_k_m.gguf by this llama-quantize binary (the quantization people download)",
    )
    args = parser.parse_args()
    family = FAMILIES[args.family]
    if args.q4_k_m and args.family != "qwen2":
        parser.error("--q4-k-m builds a qwen2 model")
    make_config = functools.partial(family.make_config, k_quant=True) if args.q4_k_m else family.make_config
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keep_norms_in_float64()

    torch.manual_seed(family.seed)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = pathlib.Path(tmp) / f"tiny-{args.family}"
        hf_dir.mkdir()
        vocab_size, encode = family.train_tokenizer(hf_dir, tiny.training_text(family.prompts, family.words, family.seed))
        config = make_config(vocab_size)
        model = family.model_class(config).to(torch.float64)
        tiny.randomize(model, family.seed, family.weight)
        if family.sharpened:
            sharpen(model, config)
        model.to(torch.float32).save_pretrained(hf_dir, safe_serialization=True)
        write_ggufs(family, args.converter, hf_dir, out, args.q4_k_m)
        if args.family == "mistral":
            from gguf import GGUFReader

            keys = GGUFReader(out / "tiny-f32.gguf").fields
            assert "llama.attention.sliding_window" not in keys, "the converter now writes Mistral's window"

        # The reference runs the saved (float32-rounded) weights in float64, as the GGUF holds them.
        texts_and_ids = [(text, encode(text)) for text in family.prompts]
        model = family.model_class.from_pretrained(hf_dir, dtype=torch.float64, attn_implementation="eager").eval()
        prompts, logits = tiny.reference_logits(model, texts_and_ids)
        for name, rope in family.other_rope.items():
            config = make_config(vocab_size, rope)
            model = family.model_class.from_pretrained(hf_dir, config=config, dtype=torch.float64, attn_implementation="eager")
            _, other_logits = tiny.reference_logits(model.eval(), texts_and_ids)
            other_logits[0].tofile(out / f"reference_{name}_logits.f64")
    tiny.write_reference(out, prompts, logits)


if __name__ == "__main__":
    main()
