#!/usr/bin/env python3
"""Builds the tiny random-weight Llama 3, Mistral and Phi-3 fixtures and their float64 reference
logits: an independent reference for `core/src/models/llama.rs` (with Llama 3 RoPE scaling) and
`core/src/models/phi3.rs`.

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

    PYTHONPATH=$LLAMA_CPP/gguf-py python decoder_tiny.py FAMILY $LLAMA_CPP/convert_hf_to_gguf.py tests/fixtures/FAMILY

needs `torch transformers sentencepiece tokenizers` (not CI: the outputs are committed). Writes
into the output directory, as `gemma3_tiny.py` does: `tiny-f32.gguf`, `tiny-q8_0.gguf`,
`reference.json` (per prompt: text, token ids with BOS, logits shape) and `reference_logits.f64`
(every prompt's logits at every position, float64 little-endian, row-major).
"""

import argparse
import functools
import importlib
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import sentencepiece as spm
import torch
import transformers
from gguf import GGUFReader

from gemma3_tiny import VOCAB_SIZE, randomize
from gemma3_tiny import train_sentencepiece as train_sentencepiece_model

SEED = 1234

PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps near the warm fire.",
    "def add(a, b):\n    return a + b  # 123 456\nprint(add(7, 35))",
    "Long context models scale rotary frequencies: tokens far back keep their order, near ones their detail.",
]

WORDS = (
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


def training_text():
    """Deterministic text for the tokenizers: the prompts' vocabulary plus filler."""
    rng = np.random.default_rng(SEED)
    return list(PROMPTS) + [" ".join(rng.choice(WORDS, size=12)) for _ in range(400)]


def train_sentencepiece(hf_dir, user_defined_symbols=()):
    """A Llama-style SentencePiece model (unk 0, BOS 1, EOS 2, byte fallback, dummy prefix)."""
    train_sentencepiece_model(
        training_text(),
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


def train_llama3_bpe(hf_dir):
    """A byte-level BPE with Llama 3's regex and its BOS/EOS names, saved as tokenizer.json."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=[bos, eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(training_text(), trainer)
    bos_id = tokenizer.token_to_id(bos)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos)
    fast.save_pretrained(hf_dir)
    config_path = hf_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["add_bos_token"] = True  # read by the converter into tokenizer.ggml.add_bos_token
    config_path.write_text(json.dumps(config, indent=1))
    return tokenizer.get_vocab_size(), lambda text: tokenizer.encode(text).ids


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


# The first prompt's logits of the same weights with other RoPE parameters, per family:
# `reference_{name}_logits.f64`.
OTHER_ROPE = {
    "llama3": {"unscaled": {"rope_type": "default", "rope_theta": LLAMA3_ROPE["rope_theta"]}},
    "phi3": {"unscaled": {"rope_type": "default", "rope_theta": PHI3_ROPE["rope_theta"]}},
    # Linear scaling, which the Rust test asks of the same GGUF through `rope.scaling.*` keys.
    "mistral": {"linear2": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0}},
}

FAMILIES = {
    "llama3": (transformers.LlamaForCausalLM, llama3_config, train_llama3_bpe, "llama-bpe"),
    "mistral": (transformers.MistralForCausalLM, mistral_config, train_sentencepiece, None),
    # llama.cpp refuses a Phi-3 vocabulary without `<|endoftext|>` (it sets that token's attributes).
    "phi3": (
        transformers.Phi3ForCausalLM,
        phi3_config,
        functools.partial(train_sentencepiece, user_defined_symbols=["<|endoftext|>"]),
        None,
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


def rms_norm_in_input_dtype(self, x):
    """transformers' RMS norms compute in float32 whatever the model dtype: keep float64."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def convert(converter, hf_dir, outtype, outfile, bpe_pre):
    """Runs llama.cpp's converter; for a trained BPE vocabulary, telling it the pre-tokenizer name
    its hash cannot find (see the module docstring)."""
    if bpe_pre is None:
        command = [sys.executable, converter]
    else:
        patch = (
            "import sys, runpy, pathlib; sys.path.insert(0, str(pathlib.Path(sys.argv[1]).parent)); "
            "import conversion.base as b; "
            f"b.TextModel.get_vocab_base_pre = lambda self, tokenizer: {bpe_pre!r}; "
            "path = sys.argv.pop(1); sys.argv[0] = path; runpy.run_path(path, run_name='__main__')"
        )
        command = [sys.executable, "-c", patch, converter]
    subprocess.run(command + [str(hf_dir), "--outtype", outtype, "--outfile", str(outfile)], check=True)


def reference_logits(model, encode):
    prompts, logits = [], []
    for text in PROMPTS:
        ids = encode(text)
        with torch.no_grad():
            row_logits = model(torch.tensor([ids])).logits[0].numpy().astype("<f8")
        prompts.append({"text": text, "ids": ids, "rows": row_logits.shape[0], "vocab": row_logits.shape[1]})
        logits.append(row_logits)
    return prompts, logits


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("converter", help="llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    model_class, make_config, train_tokenizer, bpe_pre = FAMILIES[args.family]
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for module in ["llama", "mistral", "phi3"]:
        modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
        getattr(modeling, f"{module.capitalize()}RMSNorm").forward = rms_norm_in_input_dtype

    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = pathlib.Path(tmp) / f"tiny-{args.family}"
        hf_dir.mkdir()
        vocab_size, encode = train_tokenizer(hf_dir)
        config = make_config(vocab_size)
        model = model_class(config).to(torch.float64)
        randomize(model)
        sharpen(model, config)
        model.to(torch.float32).save_pretrained(hf_dir, safe_serialization=True)
        for outtype in ["f32", "q8_0"]:
            convert(args.converter, hf_dir, outtype, out / f"tiny-{outtype}.gguf", bpe_pre)
        if args.family == "mistral":
            keys = GGUFReader(out / "tiny-f32.gguf").fields
            assert "llama.attention.sliding_window" not in keys, "the converter now writes Mistral's window"

        # The reference runs the saved (float32-rounded) weights in float64, as the GGUF holds them.
        model = model_class.from_pretrained(hf_dir, dtype=torch.float64, attn_implementation="eager").eval()
        prompts, logits = reference_logits(model, encode)
        for name, rope in OTHER_ROPE.get(args.family, {}).items():
            config = make_config(vocab_size, rope)
            model = model_class.from_pretrained(hf_dir, config=config, dtype=torch.float64, attn_implementation="eager")
            _, other_logits = reference_logits(model.eval(), encode)
            other_logits[0].tofile(out / f"reference_{name}_logits.f64")
    (out / "reference.json").write_text(json.dumps({"prompts": prompts}, indent=1) + "\n")
    np.concatenate(logits).tofile(out / "reference_logits.f64")


if __name__ == "__main__":
    main()
