"""Prefix-aware routing: requests sharing a long system prompt land on one replica, whose prefix
cache then serves them (its `prefix_cache_hit_tokens` rises, the other's does not); distinct
prompts spread over both replicas."""

from __future__ import annotations

import httpx
from conftest import AUTH, PIN_HEADER

MODEL = "smollm2"
#: Several routing blocks (256 characters each) and many KV blocks of shared prefix.
SYSTEM = ("You are the help desk of a lighthouse museum. Answer in one short sentence, politely, "
          "and mention the opening hours (nine to five) when it fits. ") * 8
QUESTIONS = ["Where is the gift shop?", "Can I bring my dog?", "Is there parking?",
             "Do you sell tickets online?", "Is the tower open in winter?", "Are there guided tours?"]


def chat(cluster, messages: list[dict]) -> str:
    """Sends one short greedy chat request; returns the replica that served it."""
    response = httpx.post(f"{cluster.url}/v1/chat/completions", headers=AUTH, timeout=120,
                          json={"model": MODEL, "messages": messages, "max_tokens": 2, "temperature": 0})
    response.raise_for_status()
    return response.headers[PIN_HEADER]


def hit_tokens(cluster) -> dict[str, float]:
    return {r: cluster.metrics(r)["cortexstream_prefix_cache_hit_tokens_total"] for r in cluster.replica_ids()}


def test_requests_sharing_a_long_system_prompt_land_on_one_replica(cluster):
    before = hit_tokens(cluster)
    served_by = {chat(cluster, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
                 for q in QUESTIONS}
    after = hit_tokens(cluster)

    assert len(served_by) == 1, f"the shared prefix was spread over {served_by}"
    (owner,) = served_by
    (other,) = set(after) - {owner}
    # Every request after the first reuses the system prompt's KV blocks.
    assert after[owner] - before[owner] >= (len(QUESTIONS) - 1) * 100
    assert after[other] == before[other]


def test_distinct_prompts_spread_over_both_replicas(cluster):
    served_by = [chat(cluster, [{"role": "user", "content": f"Tell me fact number {i} about {topic}."}])
                 for i, topic in enumerate(["owls", "rivers", "copper", "tides", "maple trees", "comets"])]
    # Idle replicas tie on load; the one that waited longest takes the next new prefix.
    assert set(served_by) == set(cluster.replica_ids()), served_by


def test_a_pinned_request_reaches_its_replica(cluster):
    for replica in cluster.replica_ids():
        response = httpx.get(f"{cluster.url}/v1/models", headers={**AUTH, PIN_HEADER: replica}, timeout=60)
        assert response.status_code == 200
        assert response.headers[PIN_HEADER] == replica
