"""Facts about this machine and processes: memory read bandwidth, peak resident memory."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy

GIB = 1 << 30


def read_bandwidth_bytes_per_s(threads: int, total_bytes: int = GIB, repeats: int = 3) -> float:
    """Best-of-``repeats`` read bandwidth of ``threads`` threads summing disjoint slices of one array.

    numpy's sum releases the GIL and streams its input once, so the threads read memory in
    parallel like a decode step reads the weights. The array is 4x the largest last-level cache
    of any machine we run on, so the figure is DRAM bandwidth, not cache bandwidth.
    """
    data = numpy.ones(total_bytes // 4, dtype=numpy.float32)  # ones, not empty: pages must be touched
    slices = numpy.array_split(data, threads)
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=numpy.sum, args=(part,)) for part in slices]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, data.nbytes / (time.perf_counter() - start))
    return best


# The CPU features that decide which of our matmul kernels runs (AVX2, VNNI, AMX) and which
# ggml kernels llama.cpp builds with -march=native.
KERNEL_FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512_vnni", "amx_tile", "amx_int8")


def cpu_description() -> dict[str, object]:
    """The CPU model name and which of ``KERNEL_FLAGS`` it has, from /proc/cpuinfo (Linux)."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "flags": [flag for flag in KERNEL_FLAGS if flag in flags]}


def peak_rss_bytes(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM) of a live process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def weight_bytes_per_token(model: str) -> int:
    """Bytes a decode step reads: every weight once. The GGUF is almost all weights, and for a
    model with a tied output head even the embedding table is read in full (as the head)."""
    return os.path.getsize(model)
