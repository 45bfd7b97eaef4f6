"""Checksums of every tensor of a real GGUF file as the `gguf` Python package (gguf-py)
dequantizes it, for core/src/quant/tests.rs (`real_tensors_dequantize_like_gguf_py`), which
recomputes them from our dequantized rows. CI does not run this; rerun it by hand:

    pip install gguf numpy
    python tests/reference/real_tensor_checksums.py MODEL.gguf tests/fixtures/quant/NAME.checksums.json

Checksum of a tensor's values v[0..n] in row-major order (ggml's order): the f32 bit patterns
weighted by odd numbers, Σ bits(v[i]) * (2i + 1) mod 2^64. An odd weight is invertible mod
2^64, so any single value that differs in any bit changes the checksum.
"""

import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def checksum(tensor):
    data = tensor.data
    rows = data.reshape(data.shape[0], -1) if data.ndim > 1 else data.reshape(1, -1)
    total, offset = np.uint64(0), 0
    for start in range(0, rows.shape[0], 4096):
        values = dequantize(rows[start : start + 4096], tensor.tensor_type).astype("<f4").reshape(-1)
        bits = values.view(np.uint32).astype(np.uint64)
        weights = np.arange(offset, offset + bits.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        total += (bits * weights).sum(dtype=np.uint64)
        offset += bits.size
    return int(total), offset


def main(path, out):
    result = {}
    for tensor in GGUFReader(path).tensors:
        total, count = checksum(tensor)
        result[tensor.name] = {"type": tensor.tensor_type.name, "values": count, "checksum": str(total)}
    with open(out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    with np.errstate(over="ignore"):
        main(sys.argv[1], sys.argv[2])
