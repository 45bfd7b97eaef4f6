"""Closing engines: explicit, by context manager, and at interpreter exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import cortexstream


def test_close_then_calls_raise_engine_closed():
    with cortexstream.Engine(embedding_model=False, kv_cache_tokens=1024) as engine:
        stream = engine.stream("Tell me a long story.", max_tokens=2000, ignore_eos=True)
        next(stream)
    assert engine.closed
    assert list(stream)[-1].finish_reason == "cancelled"
    with pytest.raises(cortexstream.EngineClosedError) as caught:
        engine.generate("Hello", max_tokens=1)
    assert caught.value.code == "engine_closed"
    engine.close()  # idempotent


def test_no_traceback_at_exit_with_a_live_engine_and_stream():
    script = textwrap.dedent(
        """
        import cortexstream
        engine = cortexstream.Engine(embedding_model=False, kv_cache_tokens=1024)
        stream = engine.stream("Tell me a long story.", max_tokens=2000, ignore_eos=True)
        print(next(stream).token_id is not None)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "True", "")
