"""The REST server started with `--model gemma3` (the cache name `scripts/serve.sh --model gemma3`
passes through; CI pulls the file with `pull all`): the real Gemma 3 base model serves text
completions, and chat gets 400 `chat_template_missing` since the file ships no template."""

from __future__ import annotations

import httpx
import pytest

from cortexstream import models

from conftest import AUTH, serving, wait_for_metrics


@pytest.fixture(scope="module")
def gemma3_server():
    assert models.GEMMA3.is_present(), "gemma3 missing; run `python3 python/cortexstream/models.py pull all`"
    yield from serving("--model", "gemma3", "--kv-cache-tokens", "512", "--embedding-model", "none")


def served_model_id(server) -> str:
    response = httpx.get(f"{server.url}/v1/models", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    ids = [m["id"] for m in response.json()["data"]]
    assert len(ids) == 1, ids
    return ids[0]


def test_the_served_model_is_named_by_its_cache_name(gemma3_server) -> None:
    assert served_model_id(gemma3_server) == "gemma3"


def test_text_completion_works(gemma3_server) -> None:
    response = httpx.post(f"{gemma3_server.url}/v1/completions", headers=AUTH, timeout=120,
                          json={"model": served_model_id(gemma3_server), "prompt": "The capital of France is",
                                "max_tokens": 4, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] >= 1
    assert body["choices"][0]["text"].strip(), body


def test_chat_is_400_chat_template_missing(gemma3_server) -> None:
    response = httpx.post(f"{gemma3_server.url}/v1/chat/completions", headers=AUTH, timeout=60,
                          json={"model": served_model_id(gemma3_server),
                                "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("chat_template_missing", "messages"), error


def test_ollama_chat_is_400_naming_the_missing_template(gemma3_server) -> None:
    response = httpx.post(f"{gemma3_server.url}/api/chat", headers=AUTH, timeout=60,
                          json={"model": "gemma3", "messages": [{"role": "user", "content": "Hi"}],
                                "stream": False, "options": {"num_predict": 2}})
    assert response.status_code == 400, response.text
    assert "no chat template" in response.json()["error"]


def test_the_sliding_window_pool_is_a_gauge_and_whole_when_idle(gemma3_server) -> None:
    response = httpx.post(f"{gemma3_server.url}/v1/completions", headers=AUTH, timeout=120,
                          json={"model": served_model_id(gemma3_server), "prompt": "Sliding windows " * 40,
                                "max_tokens": 4, "temperature": 0})
    assert response.status_code == 200, response.text
    text = httpx.get(f"{gemma3_server.url}/metrics", headers=AUTH).text
    assert "# TYPE cortexstream_kv_sliding_blocks_free gauge" in text
    # --kv-cache-tokens 512: 32 global blocks of 16; the sliding pool's rule (32 sequences of a
    # 512-token window and a 64-token chunk) is capped by the global pool.
    metrics = wait_for_metrics(
        gemma3_server,
        lambda m: m["cortexstream_running"] == 0
        and m["cortexstream_kv_sliding_blocks_free"] == m["cortexstream_kv_sliding_blocks_total"]
        and m["cortexstream_kv_blocks_free"] == m["cortexstream_kv_blocks_total"],
        "both KV pools whole once idle",
    )
    assert (metrics["cortexstream_kv_blocks_total"], metrics["cortexstream_kv_sliding_blocks_total"]) == (32, 32)
