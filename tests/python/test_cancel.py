"""Leaving a stream early frees its request; a failing consumer does not hurt the engine."""

from __future__ import annotations

import signal
import threading
from typing import Iterator
import _thread

import pytest

import cortexstream

from conftest import idle, wait_until

LONG = dict(max_tokens=2000, ignore_eos=True)


def test_breaking_out_of_a_stream_frees_the_request(engine):
    before = engine.metrics()["requests_cancelled"]
    for i, _ in enumerate(engine.stream("Tell me a long story.", **LONG)):
        if i == 2:
            break
    assert wait_until(lambda: engine.metrics()["requests_cancelled"] == before + 1 and idle(engine))


def test_close_and_cancel_end_the_stream(engine):
    stream = engine.stream("Tell me a long story.", **LONG)
    next(stream)
    stream.cancel()
    rest = list(stream)
    assert rest[-1].finish_reason == "cancelled" and stream.completion.finish_reason == "cancelled"

    with engine.stream("Tell me a long story.", **LONG) as stream:
        next(stream)
    assert stream.finished and list(stream) == []
    assert wait_until(lambda: idle(engine))


def test_a_consumer_that_raises_does_not_break_the_engine(engine):
    with pytest.raises(RuntimeError, match="consumer failed"):
        for _ in engine.stream("Tell me a long story.", **LONG):
            raise RuntimeError("consumer failed")
    assert wait_until(lambda: idle(engine))
    assert engine.generate("Hello", max_tokens=3, temperature=0.0, ignore_eos=True).usage.completion_tokens == 3


def test_ctrl_c_interrupts_a_blocking_generate_and_cancels_it(engine):
    before = engine.metrics()["requests_cancelled"]
    # A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored, so
    # interrupt_main would do nothing: install Python's own Ctrl-C handler for this test.
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.generate("Tell me a long story.", **LONG)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous_handler)
    assert wait_until(lambda: engine.metrics()["requests_cancelled"] == before + 1 and idle(engine))


def take_queued(stream) -> int:
    """Reads the chunks already delivered (sampled before the cancel that follows)."""
    taken = 0
    while stream.next_chunk(0) is not None:
        taken += 1
    return taken


@pytest.mark.parametrize("tokens_before_cancel", [3, 4, 5, 6])
def test_cancel_takes_effect_within_one_step(engine, tokens_before_cancel):
    """Counted in engine steps: the one running when cancel() is called may finish, no more.
    Several phases, so a cancel applied only every few steps cannot pass by luck."""
    stream = engine.stream("Tell me a long story.", temperature=0.0, **LONG)
    seen = sum(1 for _ in zip(range(tokens_before_cancel), stream)) + take_queued(stream)
    stream.cancel()
    steps_before = engine.metrics()["steps"]  # after cancel(): only a step already past its check may end
    rest = list(stream)
    steps_after = engine.metrics()["steps"]
    assert rest[-1].finish_reason == "cancelled"
    assert steps_after - steps_before <= 1, f"{steps_after - steps_before} steps ran after cancel()"
    tokens_after = len(rest) - 1
    assert tokens_after <= 2, f"{tokens_after} tokens after cancel()"  # that step's, one racing the drain
    assert rest[-1].usage.completion_tokens == seen + tokens_after
    assert wait_until(lambda: idle(engine))


@pytest.fixture(scope="module")
def small_steps() -> Iterator[cortexstream.Engine]:
    """An engine that prefills a prompt alone 256 tokens a step (``max_batch_tokens``; the
    default 2048 would take a 3000-token prompt in two steps, too few to cancel in between)."""
    with cortexstream.Engine(embedding_model=False, kv_cache_tokens=4096, max_batch_tokens=256) as engine:
        yield engine


def test_cancel_during_a_long_prefill(small_steps):
    engine = small_steps
    sentence = engine.tokenize(" The river runs past the old mill and under the stone bridge.")
    prompt = (sentence * 400)[:3000]  # 12 prefill steps of 256 tokens
    before = engine.metrics()
    stream = engine.stream(prompt, max_tokens=16, temperature=0.0)
    assert wait_until(lambda: engine.metrics()["prefill_tokens_total"] > before["prefill_tokens_total"])
    stream.cancel()
    steps_before = engine.metrics()["steps"]  # after cancel(): only a step already past its check may end
    chunks = list(stream)
    after = engine.metrics()
    assert [c.finish_reason for c in chunks] == ["cancelled"], "no token for a cancelled prefill"
    assert chunks[-1].usage.completion_tokens == 0 and chunks[-1].usage.prompt_tokens == len(prompt)
    assert after["steps"] - steps_before <= 1, f"{after['steps'] - steps_before} steps ran after cancel()"
    prefilled = after["prefill_tokens_total"] - before["prefill_tokens_total"]
    assert prefilled < len(prompt), f"the cancel came after the prefill ({prefilled} tokens computed)"
    assert wait_until(lambda: idle(engine))
