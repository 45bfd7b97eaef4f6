"""Which stop ended a request (`stop_reason`), on completions and on the last stream chunk,
and the metrics dict built straight from the core's snapshot."""

from __future__ import annotations

import cortexstream

GREEDY = dict(temperature=0.0, ignore_eos=True)


def _reason(stop: cortexstream.StopReason | None) -> tuple:
    assert stop is not None
    return (stop.kind, stop.token_id, stop.stop_string)


def test_a_stop_string_is_named_on_the_completion_and_the_last_chunk(engine, reference):
    prompt = reference["raw_completion"]["prompt"]  # greedy: " with a quick brown bear..."
    stops = ["bear", "never", "quick"]  # "quick" completes first although "bear" is listed first
    completion = engine.generate(prompt, max_tokens=24, stop=stops, **GREEDY)
    assert completion.finish_reason == "stop"
    assert _reason(completion.stop_reason) == ("stop_string", None, "quick")
    chunks = list(engine.stream(prompt, max_tokens=24, stop=stops, **GREEDY))
    assert _reason(chunks[-1].stop_reason) == ("stop_string", None, "quick")
    assert all(c.stop_reason is None for c in chunks[:-1])


def test_a_stop_token_id_is_named_with_its_id(engine, reference):
    ref = reference["raw_completion"]
    third = ref["greedy_token_ids"][2]
    completion = engine.generate(ref["prompt"], max_tokens=24, stop_token_ids=[third], **GREEDY)
    assert completion.finish_reason == "stop"
    assert _reason(completion.stop_reason) == ("stop_token", third, None)
    assert completion.token_ids[-1] == third


def test_the_end_of_generation_token_is_eos_with_its_id(engine):
    messages = [{"role": "user", "content": "Say hello."}]
    completion = engine.chat(messages, max_tokens=64, temperature=0.0)
    assert completion.finish_reason == "stop", completion.text
    assert _reason(completion.stop_reason) == ("eos", completion.token_ids[-1], None)
    last = list(engine.stream_chat(messages, max_tokens=64, temperature=0.0))[-1]
    assert _reason(last.stop_reason) == ("eos", completion.token_ids[-1], None)


def test_length_is_a_stop_reason_and_the_record_reads_well(engine, reference):
    completion = engine.generate(reference["raw_completion"]["prompt"], max_tokens=3, **GREEDY)
    assert (completion.finish_reason, _reason(completion.stop_reason)) == ("length", ("length", None, None))
    assert repr(completion.stop_reason) == "StopReason(kind='length', token_id=None, stop_string=None)"


def test_metrics_come_as_a_dict_of_python_numbers_with_tuple_buckets(engine, reference):
    engine.generate(reference["raw_completion"]["prompt"], max_tokens=2, **GREEDY)
    metrics = engine.metrics()
    assert isinstance(metrics["requests_finished"], int) and metrics["requests_finished"] >= 1
    histogram = metrics["time_to_first_token_seconds"]
    assert histogram["count"] >= 1 and isinstance(histogram["sum"], float)
    # Built from the snapshot's own types: (upper bound, cumulative count) tuples, not the
    # lists a JSON round trip would give.
    assert histogram["buckets"] and all(
        isinstance(b, tuple) and isinstance(b[0], float) and isinstance(b[1], int) for b in histogram["buckets"]
    )
