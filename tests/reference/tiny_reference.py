"""What the tiny random-weight model scripts (`gemma3_tiny.py`, `decoder_tiny.py`) share: the
tokenizer training text and trainers, the weight randomization, the run of llama.cpp's converter
(with the BPE pre-tokenizer name patch) and the reference files the Rust checks read
(`core/tests/common/reference.rs`)."""

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import torch

VOCAB_SIZE = 384

# The first two prompts of every tiny fixture (prose, and code with digits and newlines); each
# family adds a third of its own.
SHARED_PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps near the warm fire.",
    "def add(a, b):\n    return a + b  # 123 456\nprint(add(7, 35))",
]


def training_text(prompts, words, seed):
    """Deterministic text for a tiny tokenizer: the prompts plus 400 lines of 12 random words."""
    rng = np.random.default_rng(seed)
    lines = list(prompts)
    for _ in range(400):
        lines.append(" ".join(rng.choice(words, size=12)))
    return lines


def train_sentencepiece(lines, path, **options):
    """A tiny BPE SentencePiece model with byte fallback, split digits and no normalization
    (neither Gemma's nor Llama's tokenizer maps newlines to spaces; neither does llama.cpp), plus
    `options` (special ids, dummy prefix, ...)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=VOCAB_SIZE,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        remove_extra_whitespaces=False,
        split_digits=True,
        normalization_rule_name="identity",
        **options,
    )
    path.write_bytes(model.getvalue())


def train_byte_level_bpe(lines, split_pattern, special_tokens):
    """A tiny byte-level BPE (`tokenizers.Tokenizer`) whose pre-tokenizer splits with the family's
    regex `split_pattern` and then maps bytes to characters, as Llama 3's and Qwen 2's do."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


def randomize(model, seed, value):
    """Every parameter replaced, in order, by `value(name, parameter, noise)` of standard normal
    float64 `noise` drawn from a generator seeded with `seed`: weights of a size that gives the
    logits a real spread (the default init is near zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            p.copy_(value(name, p, noise))


def default_weight(name, p, noise):
    """`randomize`'s weights for Gemma 3 and the Llama-architecture families: norm weights away
    from zero (so a norm read wrongly, e.g. without Gemma's +1, shows), embeddings of spread 0.5,
    matrices scaled by 1/sqrt(fan-in)."""
    if name.endswith("norm.weight"):
        return noise * 0.3
    if "embed_tokens" in name:
        return noise * 0.5
    return noise / p.shape[-1] ** 0.5


def rms_norm_in_input_dtype(self, x):
    """transformers' RMS norms (Llama, Mistral, Phi-3, Qwen) compute in float32 whatever the
    model dtype: keep float64."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def convert(converter, hf_dir, outtype, outfile, bpe_pre=None):
    """Runs llama.cpp's `convert_hf_to_gguf.py` (with its own `gguf-py`) on `hf_dir`. The
    converter names a BPE pre-tokenizer by hashing the real vocabulary's output, which a tiny
    trained vocabulary cannot reproduce: for one, `bpe_pre` is the name to write (the llama.cpp
    pre-tokenizer whose regex the tokenizer was trained with; tokenizer correctness for those
    names is held by llama.cpp's vocab tests in `core/tests/tokenizer_vocab.rs`)."""
    converter = pathlib.Path(converter).resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(converter.parent / "gguf-py"), env.get("PYTHONPATH")]))
    if bpe_pre is None:
        command = [sys.executable, str(converter)]
    else:
        patch = (
            "import sys, runpy, pathlib; sys.path.insert(0, str(pathlib.Path(sys.argv[1]).parent)); "
            "import conversion.base as b; "
            f"b.TextModel.get_vocab_base_pre = lambda self, tokenizer: {bpe_pre!r}; "
            "path = sys.argv.pop(1); sys.argv[0] = path; runpy.run_path(path, run_name='__main__')"
        )
        command = [sys.executable, "-c", patch, str(converter)]
    subprocess.run(command + [str(hf_dir), "--outtype", outtype, "--outfile", str(outfile)], check=True, env=env)


def reference_logits(model, texts_and_ids):
    """`model`'s logits at every position of each prompt's ids: the `reference.json` entries
    (text, ids, logits shape) and the float64 little-endian logits, per prompt."""
    prompts, logits = [], []
    for text, ids in texts_and_ids:
        with torch.no_grad():
            row_logits = model(torch.tensor([ids])).logits[0].numpy().astype("<f8")
        prompts.append({"text": text, "ids": ids, "rows": row_logits.shape[0], "vocab": row_logits.shape[1]})
        logits.append(row_logits)
    return prompts, logits


def write_reference(out: pathlib.Path, prompts, logits):
    """`reference.json` (per prompt: text, ids, logits shape) and `reference_logits.f64` (every
    position's logits, float64 little-endian, row-major, prompts in order), from
    `reference_logits`."""
    (out / "reference.json").write_text(json.dumps({"prompts": prompts}, indent=1) + "\n")
    np.concatenate(logits).tofile(out / "reference_logits.f64")
