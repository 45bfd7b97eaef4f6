"""Independent float64 reference for BERT sentence embeddings (sentence-transformers layout).

Loads model.safetensors with safetensors.numpy, tokenizes with the `tokenizers` package, runs the
BERT encoder in float64 numpy, mean-pools over the tokens and L2-normalises.

Usage: python bert_f64.py MODEL_DIR < sentences.json > embeddings.json
(stdin: a JSON list of strings; stdout: a JSON list of vectors.)
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

ERF = np.vectorize(math.erf)


def layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu(x):
    return 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0)))


def encode(ids, w, config):
    """Hidden states [len, hidden] of one unpadded sequence."""
    hidden = config["hidden_size"]
    n_heads = config["num_attention_heads"]
    head_dim = hidden // n_heads
    eps = config["layer_norm_eps"]

    def linear(x, name):
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    positions = np.arange(len(ids))
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.token_type_embeddings.weight"][0]
        + w["embeddings.position_embeddings.weight"][positions]
    )
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def heads(t):
            return t.reshape(len(ids), n_heads, head_dim).transpose(1, 0, 2)

        q = heads(linear(x, f"{p}.attention.self.query"))
        k = heads(linear(x, f"{p}.attention.self.key"))
        v = heads(linear(x, f"{p}.attention.self.value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(len(ids), hidden)
        attn = linear(context, f"{p}.attention.output.dense")
        x = layer_norm(attn + x, w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"], eps)
        inter = gelu(linear(x, f"{p}.intermediate.dense"))
        out = linear(inter, f"{p}.output.dense")
        x = layer_norm(out + x, w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], eps)
    return x


def main():
    model_dir = Path(sys.argv[1])
    config = json.loads((model_dir / "config.json").read_text())
    weights = {
        name.removeprefix("bert."): tensor.astype(np.float64)
        for name, tensor in load_file(str(model_dir / "model.safetensors")).items()
    }
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()

    embeddings = []
    for text in json.load(sys.stdin):
        ids = np.array(tokenizer.encode(text).ids)
        pooled = encode(ids, weights, config).mean(axis=0)
        embeddings.append((pooled / np.linalg.norm(pooled)).tolist())
    json.dump(embeddings, sys.stdout)


if __name__ == "__main__":
    main()
