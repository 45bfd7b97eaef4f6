"""Leaving a stream early frees its request; a failing consumer does not hurt the engine."""

from __future__ import annotations

import signal
import threading
import _thread

import pytest

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
