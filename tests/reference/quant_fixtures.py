"""Random ggml blocks and their dequantization by the `gguf` Python package (gguf-py), the
reference our dequantizers must equal bit for bit (core/src/quant/tests.rs).

Writes tests/fixtures/quant/<TYPE>.bin (raw ggml blocks) and <TYPE>.f32 (little-endian f32,
what `gguf.quants.dequantize` returns). CI does not run this; rerun it by hand:

    pip install gguf numpy
    python tests/reference/quant_fixtures.py

Blocks are random bytes except the f16 scales, which are finite with magnitudes in
[2^-8, 2^-2) and random signs, so no NaN or infinity appears (garbage scales would compare
NaN to NaN). 3072 values per type: three rows of 1024 for the Rust test.
"""

import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

VALUES = 3072
OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "quant"

# type: (values per block, bytes per block, byte offsets of f16 scales)
LAYOUTS = {
    "Q5_0": (T.Q5_0, 32, 22, [0]),
    "Q5_1": (T.Q5_1, 32, 24, [0, 2]),
    "Q2_K": (T.Q2_K, 256, 84, [80, 82]),
    "Q3_K": (T.Q3_K, 256, 110, [108]),
    "Q4_K": (T.Q4_K, 256, 144, [0, 2]),
    "Q5_K": (T.Q5_K, 256, 176, [0, 2]),
    "Q6_K": (T.Q6_K, 256, 210, [208]),
    "IQ4_NL": (T.IQ4_NL, 32, 18, [0]),
    "IQ4_XS": (T.IQ4_XS, 256, 136, [0]),
}


def f16_scales(rng, n):
    exponent = rng.integers(7, 13, n, dtype=np.uint16)
    bits = (rng.integers(0, 2, n, dtype=np.uint16) << 15) | (exponent << 10) | rng.integers(0, 1024, n, dtype=np.uint16)
    return bits.astype("<u2")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(16)
    for name, (qtype, per_block, block_bytes, scales) in LAYOUTS.items():
        n_blocks = VALUES // per_block
        blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
        for at in scales:
            blocks[:, at : at + 2] = f16_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        write(name, blocks.tobytes(), dequantize(blocks.reshape(-1), qtype))
    # BF16: any finite value (random sign, exponent and mantissa bits).
    bits = rng.integers(0, 1 << 16, 2 * VALUES, dtype=np.uint16)
    bits = bits[((bits >> 7) & 0xFF) != 0xFF][: VALUES - 8]
    bits = np.concatenate([bits, np.array([0, 0x8000, 1, 0x8001, 0x7F7F, 0xFF7F, 0x0080, 0x3F80], dtype=np.uint16)])
    raw = bits.astype("<u2").tobytes()
    write("BF16", raw, dequantize(np.frombuffer(raw, dtype=np.uint8), T.BF16))


def write(name, raw, values):
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    assert values.size == VALUES and np.isfinite(values).all(), name
    (OUT / f"{name}.bin").write_bytes(raw)
    (OUT / f"{name}.f32").write_bytes(values.astype("<f4").tobytes())
    print(f"{name}: {len(raw)} bytes -> {values.size} values")


if __name__ == "__main__":
    main()
