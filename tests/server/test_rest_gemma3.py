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


@pytest.fixture(scope="module")
def two_architectures_server():
    """Issue 22's check with two real generation models: SmolLM2 (llama) and Gemma 3 beside
    MiniLM, one server."""
    assert models.GEMMA3.is_present(), "gemma3 missing; run `python3 python/cortexstream/models.py pull all`"
    yield from serving("--model", "smollm2", "--model", "gemma3", "--embedding-model", "minilm",
                       "--kv-cache-tokens", "512", "--threads", "1")


def test_smollm2_gemma3_and_minilm_serve_interleaved_from_the_official_clients(two_architectures_server) -> None:
    import concurrent.futures

    import ollama
    import openai

    url = two_architectures_server.url
    openai_client = openai.OpenAI(base_url=f"{url}/v1", api_key=AUTH["Authorization"][7:], max_retries=0, timeout=120)
    ollama_client = ollama.Client(host=url, headers=AUTH, timeout=120)
    prompt = "The capital of France is"

    def gemma3_completion() -> str:
        return openai_client.completions.create(model="gemma3", prompt=prompt, max_tokens=4, temperature=0).choices[0].text

    def smollm2_chat() -> str:
        return ollama_client.chat(model="smollm2:latest", messages=[{"role": "user", "content": "Hi"}],
                                  options={"num_predict": 4, "temperature": 0}).message.content

    def minilm_embedding() -> int:
        return len(ollama_client.embed(model="all-minilm", input=prompt).embeddings[0])

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(job) for _ in range(2) for job in (gemma3_completion, smollm2_chat, minilm_embedding)]
        results = [job.result() for job in jobs]
    gemma3_texts, smollm2_texts, dims = results[0::3], results[1::3], results[2::3]
    assert gemma3_texts[0] == gemma3_texts[1] and gemma3_texts[0].strip(), "greedy: the same text twice"
    assert all(text for text in smollm2_texts) and dims == [384, 384]
    running = {m.model: m for m in ollama_client.ps().models}
    assert set(running) == {"smollm2:latest", "gemma3:latest", "minilm:latest"}, running
    assert ollama_client.show("gemma3").details.family == "gemma3"
    assert ollama_client.show("smollm2").details.family == "llama"
    # The base model still has no chat template, beside one that has.
    with pytest.raises(openai.BadRequestError) as no_template:
        openai_client.chat.completions.create(model="gemma3", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert no_template.value.code == "chat_template_missing"
