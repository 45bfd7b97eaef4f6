"""The gateway's prefix routing key and the application's options (no cluster needed)."""

from __future__ import annotations

import json

import pytest

from cortexstream_ray.deployment import RayServeOptions, scaling  # conftest puts examples/ray on the path
from cortexstream_ray.prefix import BLOCK_CHARS, PIN_HEADER, prefix_key, routing_hint

SYSTEM = "x" * (3 * BLOCK_CHARS)


def chat(user: str, system: str = SYSTEM, model: str = "smollm2") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "system", "content": system},
                                                    {"role": "user", "content": user}]}).encode()


def test_a_shared_system_prompt_shares_the_leading_blocks():
    first, second = prefix_key("/v1/chat/completions", chat("a")), prefix_key("/v1/chat/completions", chat("b"))
    assert first[:3] == second[:3]
    assert first != second


def test_the_model_is_part_of_the_key():
    assert set(prefix_key("/v1/chat/completions", chat("a"))).isdisjoint(
        prefix_key("/v1/chat/completions", chat("a", model="gemma3")))


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"model": "m", "prompt": "hello"}),
    ("/v1/completions", {"model": "m", "prompt": ["hello", "other"]}),
    ("/api/generate", {"model": "m", "prompt": "hello"}),
    ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
])
def test_every_prompt_route_has_a_key(path, body):
    assert len(prefix_key(path, json.dumps(body).encode())) == 1


@pytest.mark.parametrize("path,raw", [
    ("/v1/chat/completions", b"not json"), ("/v1/chat/completions", b"[1, 2]"), ("/v1/chat/completions", b""),
    ("/v1/embeddings", b'{"model": "m", "input": "hello"}'), ("/v1/chat/completions", b'{"messages": "hi"}'),
])
def test_bodies_without_a_prompt_have_no_key(path, raw):
    assert prefix_key(path, raw) == ()


def test_a_pinned_replica_is_read_from_the_header():
    assert routing_hint("/v1/models", b"", [(PIN_HEADER.title(), "abc")]).replica == "abc"
    assert routing_hint("/v1/models", b"", []).replica is None


@pytest.mark.parametrize("args,field", [
    ({"replica_cpus": "0"}, "replica_cpus"), ({"min_replicas": "3", "max_replicas": "2"}, "min_replicas"),
    ({"engine": '{"threads": 4}'}, "threads"), ({"engine": '{"bogus": 1}'}, "bogus"),
    ({"max_replica": "2"}, "max_replica"), ({"num_replicas": "two"}, "num_replicas"),
])
def test_bad_options_name_the_field(args, field):
    with pytest.raises(ValueError, match=field):
        RayServeOptions.from_args(args)


def test_autoscaling_targets_requests_in_flight_unless_the_count_is_fixed():
    auto = scaling(RayServeOptions(min_replicas=1, max_replicas=4, target_ongoing_requests=8))["autoscaling_config"]
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 4, 8)
    assert scaling(RayServeOptions(num_replicas=3)) == {"num_replicas": 3}
