"""Engine settings and wait timeouts through the Python door (issue 17, item 8).

Every out-of-range setting raises ``InvalidRequestError`` naming it, never an
``OverflowError`` without a name, a huge allocation or a panic; ``next_chunk(timeout=)``
rejects NaN and negative values naming ``timeout`` and waits forever for ``inf``.
"""

from __future__ import annotations

import math
import os

import pytest

import cortexstream
from cortexstream.errors import InvalidRequestError

#: More threads than 4 per CPU is refused (the core's documented bound).
TOO_MANY_THREADS = 4 * (os.cpu_count() or 1) + 1


@pytest.mark.parametrize(
    "setting, value",
    [
        ("kv_cache_tokens", 2**64),  # not even a size
        ("kv_cache_tokens", 2**64 - 1),  # the KV byte count overflows
        ("kv_cache_tokens", 2**40),  # petabytes of KV, more than the machine's memory
        ("kv_cache_tokens", -1),
        ("threads", 2**64 - 1),
        ("threads", TOO_MANY_THREADS),
        ("threads", 0),
        ("threads", -1),
        ("max_running", -1),
        ("max_running", 0),
        ("max_batch_tokens", 0),
        ("context_length", -5),
        ("max_queue", 0),
        ("max_batch_tokens", 2**20 + 1),
        ("target_step_ms", -1),
        ("target_step_ms", math.nan),
        ("target_step_ms", math.inf),
        ("target_step_ms", 10_000.5),
        ("kv_cache_type", "q8"),
        ("kv_cache_type", "F16"),
    ],
)
def test_an_engine_setting_out_of_range_is_an_error_naming_it(setting, value):
    with pytest.raises(InvalidRequestError) as raised:
        cortexstream.Engine(embedding_model=False, **{setting: value})
    assert raised.value.param == setting, raised.value
    assert setting in str(raised.value)


def test_an_engine_setting_of_the_wrong_type_is_an_error_naming_it():
    # The core reads the settings (issue 22 item 1): a wrong type is an invalid setting, as a
    # wrong type of a request option is.
    for setting, value in [("threads", "many"), ("target_step_ms", "fast")]:
        with pytest.raises(InvalidRequestError) as raised:
            cortexstream.Engine(embedding_model=False, **{setting: value})
        assert raised.value.param == setting, raised.value


@pytest.mark.parametrize("target_step_ms", [0, 0.5, 25, 10_000])
def test_a_step_target_in_range_or_zero_for_a_fixed_budget_builds_an_engine(target_step_ms):
    with cortexstream.Engine(embedding_model=False, kv_cache_tokens=512, target_step_ms=target_step_ms) as engine:
        assert engine.generate("Hello", max_tokens=2, temperature=0.0).usage.completion_tokens >= 1


@pytest.mark.parametrize("kv_cache_type", [None, "f16", "q8_0"])
def test_each_kv_cache_type_builds_an_engine_that_generates(kv_cache_type):
    with cortexstream.Engine(embedding_model=False, kv_cache_tokens=512, kv_cache_type=kv_cache_type) as engine:
        completion = engine.generate("The quick brown fox", max_tokens=4, temperature=0.0, ignore_eos=True)
        assert completion.usage.completion_tokens == 4


@pytest.mark.parametrize("timeout", [math.nan, -1.0, -1e-9, -math.inf])
def test_next_chunk_rejects_nan_and_negative_timeouts_naming_timeout(engine, timeout):
    with engine.stream("Hello", max_tokens=2, temperature=0.0) as stream:
        with pytest.raises(InvalidRequestError) as raised:
            stream.next_chunk(timeout)
        assert raised.value.param == "timeout"
        assert not stream.finished, "a rejected call takes nothing from the stream"


@pytest.mark.parametrize("timeout", [math.inf, 1e300, 1e19, None])
def test_next_chunk_with_an_infinite_or_huge_timeout_waits_for_the_chunk(engine, timeout):
    # Used to panic in Duration::from_secs_f64 (inf) or in Instant + Duration (huge).
    stream = engine.stream("Hello", max_tokens=2, temperature=0.0, ignore_eos=True)
    chunks = []
    while (chunk := stream.next_chunk(timeout)) is not None:
        chunks.append(chunk)
    assert [c.finish_reason for c in chunks] == [None, None, "length"]


def test_next_chunk_with_a_zero_timeout_does_not_wait(engine):
    stream = engine.stream("Hello", max_tokens=2, temperature=0.0, ignore_eos=True)
    seen = 0
    while not stream.finished:
        if stream.next_chunk(0) is not None:
            seen += 1
    assert seen == 3
