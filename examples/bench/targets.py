"""The issues' speed targets, in one place: which row each applies to and its bound.

Ratios are ours / llama.cpp on the same GGUF and threads, measured side by side (rounds.py);
a target ``on_ratio=False`` is on our value alone. The rows that read them: standard rows by
key in side_by_side.standard_rows, the others by name below.
"""

from __future__ import annotations

from rounds import Target

# Issue 16 (K-quants, Gemma 3), on the standard rows of Gemma 3 270M and SmolLM2 Q4_K_M:
# decode >= 1.5x, prefill >= 2x, aggregate at 32 streams >= 4x llama-server, RSS <= 1.0x.
ISSUE16_STANDARD = {
    "decode": Target(1.5),
    "prefill": Target(2.0),
    "streams": Target(4.0),
    "rss": Target(1.0, at_most=True),
}


def issue21_standard(cpu_flags: list[str]) -> dict[str, Target]:
    """Issue 21's raised targets for the standard rows: single-stream decode >= 85% of the
    bandwidth bound, aggregate at 32 streams >= 6x llama-server where VNNI or AMX exists and
    >= 4x on AVX2-only CPUs, mean TTFT at 32 streams <= 0.1x."""
    has_vnni = any(flag in cpu_flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return {
        "bound": Target(85, on_ratio=False, unit="%"),
        "streams": Target(6.0 if has_vnni else 4.0),
        "streams_ttft": Target(0.1, at_most=True),
    }


# Issue 21, long contexts: decode at positions 128, 2k and 8k and prefill of a 4k prompt >= 1.5x.
ISSUE21_LONG_CONTEXT = Target(1.5)

# Issue 21, mixed load: p99 inter-token latency of the running streams while the long prompt
# arrives <= 2x their p99 without it (ours); the long prompt's TTFT <= 0.7x llama-server's.
ISSUE21_MIXED_ITL_P99 = Target(2.0, at_most=True, on_ratio=False)
ISSUE21_MIXED_LONG_TTFT = Target(0.7, at_most=True)
