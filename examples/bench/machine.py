"""Facts about this machine and processes: memory read bandwidth, peak resident memory."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from pathlib import Path

import numpy

GIB = 1 << 30
REPO = Path(__file__).resolve().parents[2]


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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3 (the state).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished (waited-for) children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def weight_bytes_per_token(model: str) -> int:
    """Bytes a decode step reads: every weight once. The GGUF is almost all weights, and for a
    model with a tied output head even the embedding table is read in full (as the head)."""
    return os.path.getsize(model)


def commit_hash() -> str:
    """The checked-out commit (short), marked when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def footer(cpu: dict[str, object], kernels: dict[str, object] | None, threads: int | str,
           load_start: list[float], load_end: list[float], commit: str) -> str:
    """The lines every printed table ends with: what ran, where, and how busy the machine was."""
    flags = " ".join(cpu["flags"]) or "none of " + " ".join(KERNEL_FLAGS)  # type: ignore[arg-type]
    kernel_text = ", ".join(f"{key} {value}" for key, value in kernels.items()) if kernels else "n/a"
    return "\n".join([
        f"CPU: {cpu['model']}, {os.cpu_count()} logical CPUs; kernel flags: {flags}",
        f"our kernels (kernel_info()): {kernel_text}",
        f"threads per side: {threads}",
        f"load average (1/5/15 min): {' / '.join(map(str, load_start))} at the start, "
        f"{' / '.join(map(str, load_end))} at the end",
        f"commit: {commit}",
    ])
