"""Shared fixtures: one real engine for the whole session (loading is the slow part)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest

import cortexstream

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="session")
def reference() -> Dict[str, Any]:
    """llama.cpp's outputs on the same GGUF (tests/fixtures/smollm2_reference.json)."""
    return json.loads((FIXTURES / "smollm2_reference.json").read_text())


@pytest.fixture(scope="session")
def engine() -> Iterator[cortexstream.Engine]:
    """The default models from the cache: SmolLM2 for generation, MiniLM for embeddings."""
    with cortexstream.Engine(embedding_model="minilm") as engine:
        yield engine


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Polls `condition` (the engine applies cancellations at its next step)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def idle(engine: cortexstream.Engine) -> bool:
    """No request running or queued, and every KV block (of both pools) free again."""
    m = engine.metrics()
    return (m["running"] == 0 and m["queue_depth"] == 0 and m["kv_blocks_free"] == m["kv_blocks_total"]
            and m["kv_sliding_blocks_free"] == m["kv_sliding_blocks_total"])
