"""cortexstream.kernel_info(): the core's report of the kernels this CPU runs (the bench JSON
records it beside the CPU's flags)."""

from pathlib import Path

import cortexstream

MATMUL_KERNELS = {"portable", "avx2", "avx_vnni", "avx512_vnni", "amx"}


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_kernel_info_names_the_kernels_this_cpu_runs() -> None:
    info = cortexstream.kernel_info()
    assert set(info) == {"matmul", "matmul_batched", "matmul_batched_512", "attention", "attention_slice"}
    assert info["matmul"] in MATMUL_KERNELS and info["matmul_batched"] in MATMUL_KERNELS
    assert info["attention"] in {"portable", "avx2", "avx512"}
    assert isinstance(info["matmul_batched_512"], bool)
    assert info["attention_slice"] > 0
    flags = cpu_flags()
    if {"avx2", "fma", "f16c"} <= flags:
        assert info["attention"] == ("avx512" if "avx512f" in flags else "avx2")
        assert info["matmul"] != "portable"
