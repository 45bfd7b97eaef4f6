"""Which GGUF the benchmark loads: a path, a model name from cortexstream's cache (``smollm2``,
``gemma3``: ``python/cortexstream/models.py`` resolves it), or a cached model requantized by
the peer's own ``llama-quantize`` (``smollm2-q4_k_m``: peer tooling only, so the K-quant file
both sides load does not depend on our code)."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUANTIZE_TIMEOUT_S = 1800


@functools.cache
def _cache_module():
    """cortexstream's model cache module, loaded from its file: it uses the standard library only,
    so the parent process needs neither the native module nor an installed package."""
    name = "cortexstream_models"
    spec = importlib.util.spec_from_file_location(name, REPO / "python/cortexstream/models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Requantized:
    """A cached model turned into another ggml type by the peer's llama-quantize."""

    source: str
    """Name of the cached model (its file is the input)."""
    ggml_type: str
    """llama-quantize's type name (``Q4_K_M``)."""
    file_name: str
    """File name of the output, under the peer's ``models/`` folder."""


REQUANTIZED = {
    "smollm2-q4_k_m": Requantized("smollm2", "Q4_K_M", "SmolLM2-135M-Instruct.Q4_K_M.gguf"),
}


def known_names() -> list[str]:
    return sorted([*_cache_module().KNOWN_MODELS, *REQUANTIZED])


def resolve(name_or_path: str, peer_bin: Callable[[], Path]) -> Path:
    """The GGUF to load. ``peer_bin`` returns the peer's bin directory (building it on first use);
    it is called only for a requantized model that is not made yet. Raises FileNotFoundError
    naming the names it knows when ``name_or_path`` is neither a name nor an existing file."""
    if Path(name_or_path).expanduser().exists():
        return Path(name_or_path).expanduser()
    variant = REQUANTIZED.get(name_or_path)
    if variant is None:
        try:
            return _cache_module().resolve(name_or_path)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error} (the bench also knows {', '.join(sorted(REQUANTIZED))})") from None
    return _requantize(variant, _cache_module().resolve(variant.source), peer_bin)


def _requantize(variant: Requantized, source: Path, peer_bin: Callable[[], Path]) -> Path:
    """``llama-quantize --allow-requantize SOURCE OUT TYPE`` once; the output is cached beside
    the peer's build (``<peer>/models``) and reused by later runs."""
    bin_dir = peer_bin()
    out = bin_dir.parent.parent / "models" / variant.file_name
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    command = [str(bin_dir / "llama-quantize"), "--allow-requantize", str(source), str(partial), variant.ggml_type]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=QUANTIZE_TIMEOUT_S)
    if completed.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-15:])
        raise RuntimeError(f"llama-quantize failed ({completed.returncode}):\n{tail}")
    partial.rename(out)  # only a complete file ever has the final name
    return out
