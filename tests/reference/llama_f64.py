#!/usr/bin/env python3
"""Independent float64 reference for the llama forward pass.

Dequantizes the GGUF weights with the `gguf` package and runs llama.cpp's LLAMA equations in
float64 numpy, one layer at a time (so only one layer's weights are ever dequantized), then
writes the logits of every position.

    python3 llama_f64.py MODEL.gguf 504,2365,6354,16438 logits.f64

The output is a float64 array of shape (len(ids), vocab_size): `.npy` if the name ends with
`.npy`, otherwise raw little-endian float64, row-major.
"""

import argparse

import gguf
import numpy as np


class Model:
    def __init__(self, path):
        self.reader = gguf.GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self.field("general.architecture")
        if arch != "llama":
            raise SystemExit(f"unsupported architecture {arch!r}")
        self.n_layers = int(self.field(f"{arch}.block_count"))
        self.n_heads = int(self.field(f"{arch}.attention.head_count"))
        self.n_kv_heads = int(self.field(f"{arch}.attention.head_count_kv", self.n_heads))
        hidden = int(self.field(f"{arch}.embedding_length"))
        self.head_dim = hidden // self.n_heads
        self.theta = float(self.field(f"{arch}.rope.freq_base", 10000.0))
        self.eps = float(self.field(f"{arch}.attention.layer_norm_rms_epsilon"))

    def field(self, key, default=None):
        field = self.reader.fields.get(key)
        if field is None:
            if default is None:
                raise SystemExit(f"missing metadata {key}")
            return default
        value = field.parts[field.data[0]]
        if field.types[0] == gguf.GGUFValueType.STRING:
            return bytes(value).decode("utf-8")
        return value[0]

    def weight(self, name):
        """The tensor as float64, shaped (rows, cols) = (output features, input features)."""
        tensor = self.tensors[name]
        return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64)

    def rms_norm(self, x, name):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * self.weight(name)

    def rope(self, x, positions):
        """ggml NORMAL mode: rotate adjacent pairs (x[2i], x[2i+1]) by pos * theta^(-2i/d)."""
        d = self.head_dim
        angles = positions[:, None] * self.theta ** (-2.0 * np.arange(d // 2) / d)
        cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def forward(self, ids):
        n, hd = len(ids), self.head_dim
        positions = np.arange(n, dtype=np.float64)
        embedding = self.weight("token_embd.weight")
        x = embedding[ids]
        causal = np.triu(np.full((n, n), -np.inf), k=1)
        group = self.n_heads // self.n_kv_heads
        for layer in range(self.n_layers):
            p = f"blk.{layer}."
            h = self.rms_norm(x, p + "attn_norm.weight")
            q = (h @ self.weight(p + "attn_q.weight").T).reshape(n, self.n_heads, hd)
            k = (h @ self.weight(p + "attn_k.weight").T).reshape(n, self.n_kv_heads, hd)
            v = (h @ self.weight(p + "attn_v.weight").T).reshape(n, self.n_kv_heads, hd)
            q, k = self.rope(q, positions), self.rope(k, positions)
            # Query head h uses KV head h // group.
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + causal
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            attention = np.einsum("hts,shd->thd", scores, v).reshape(n, self.n_heads * hd)
            x = x + attention @ self.weight(p + "attn_output.weight").T
            h = self.rms_norm(x, p + "ffn_norm.weight")
            gate = h @ self.weight(p + "ffn_gate.weight").T
            up = h @ self.weight(p + "ffn_up.weight").T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ self.weight(p + "ffn_down.weight").T
        h = self.rms_norm(x, "output_norm.weight")
        head = self.weight("output.weight") if "output.weight" in self.tensors else embedding
        return h @ head.T


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="path to a llama GGUF file")
    parser.add_argument("token_ids", help="comma-separated token ids")
    parser.add_argument("output", help="where to write the logits (.npy, or raw float64)")
    args = parser.parse_args()
    ids = [int(t) for t in args.token_ids.split(",")]
    logits = Model(args.model).forward(ids)
    if args.output.endswith(".npy"):
        np.save(args.output, logits)
    else:
        logits.astype("<f8").tofile(args.output)


if __name__ == "__main__":
    main()
