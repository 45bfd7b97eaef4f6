"""The Ollama endpoints, driven by the official `ollama` client."""

from __future__ import annotations

import json
from datetime import datetime

import httpx
import ollama
import pytest
from conftest import AUTH

MODEL = "smollm2"
GREEDY = {"temperature": 0, "seed": 7, "num_predict": 16}
DURATIONS = ("total_duration", "prompt_eval_duration", "eval_duration")


def assert_final_statistics(response) -> None:
    assert response.done is True
    assert response.done_reason in ("stop", "length")
    assert response.prompt_eval_count > 0
    assert 0 < response.eval_count <= GREEDY["num_predict"]
    assert all(isinstance(response[d], int) and response[d] > 0 for d in DURATIONS)
    # Nanoseconds: the whole request takes longer than its prompt and generation phases.
    assert response.total_duration >= response.prompt_eval_duration + response.eval_duration
    datetime.fromisoformat(response.created_at.replace("Z", "+00:00"))


def test_generate_stream_joins_to_the_non_streamed_response(ollama_client):
    whole = ollama_client.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY, stream=False)
    parts = list(ollama_client.generate(
        model=f"{MODEL}:latest", prompt="Why is the sky blue?", options=GREEDY, stream=True))
    assert whole.response
    assert_final_statistics(whole)
    assert "".join(p.response for p in parts) == whole.response
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert_final_statistics(parts[-1])
    assert parts[-1].eval_count == whole.eval_count


def test_chat_stream_joins_to_the_non_streamed_message(ollama_client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
    whole = ollama_client.chat(model=MODEL, messages=messages, options=GREEDY)
    parts = list(ollama_client.chat(model=MODEL, messages=messages, options=GREEDY, stream=True))
    assert whole.message.role == "assistant"
    assert_final_statistics(whole)
    assert "".join(p.message.content for p in parts) == whole.message.content


def test_num_predict_limits_the_generation(ollama_client):
    response = ollama_client.generate(model=MODEL, prompt="Count to one hundred:", options={**GREEDY, "num_predict": 3})
    assert response.eval_count == 3
    assert response.done_reason == "length"


def test_embed_and_legacy_embeddings_agree(ollama_client, openai_client):
    embedded = ollama_client.embed(model="all-minilm", input=["hello world", "goodbye"])
    legacy = ollama_client.embeddings(model="minilm", prompt="hello world")
    from_openai = openai_client.embeddings.create(model="minilm", input="hello world", encoding_format="float")
    assert len(embedded.embeddings) == 2
    assert embedded.prompt_eval_count > 0
    assert embedded.embeddings[0] == pytest.approx(legacy.embedding, abs=1e-6)
    assert legacy.embedding == pytest.approx(from_openai.data[0].embedding, abs=1e-6)


def test_tags_show_ps_and_version(ollama_client, server):
    tags = {m.model: m for m in ollama_client.list().models}
    assert set(tags) == {"smollm2:latest", "minilm:latest"}
    assert tags["smollm2:latest"].details.format == "gguf"
    assert tags["smollm2:latest"].details.family == "llama"
    assert tags["smollm2:latest"].size > 50_000_000  # the 135M-parameter Q4_1 file
    assert tags["minilm:latest"].size > 50_000_000  # 22M float32 parameters

    shown = ollama_client.show(MODEL)
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo["llama.context_length"] > 0
    assert ollama_client.show("all-minilm").capabilities == ["embedding"]

    # Loaded on first use: after a request to each, both are loaded, in RAM, with an expiry.
    ollama_client.embed(model="minilm", input="hi")
    running = {m.model: m for m in ollama_client.ps().models}
    assert set(running) == set(tags)
    assert all(m.size_vram == 0 and m.expires_at is not None for m in running.values())
    assert running["smollm2:latest"].size > tags["smollm2:latest"].size  # the weights plus the KV cache

    version = httpx.get(f"{server.url}/api/version", headers=AUTH).json()["version"]
    assert version and version[0].isdigit()


def test_errors_use_ollama_shape(ollama_client):
    with pytest.raises(ollama.ResponseError) as unknown:
        ollama_client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.status_code == 404
    assert "llama3" in unknown.value.error

    with pytest.raises(ollama.ResponseError) as invalid:
        ollama_client.generate(model=MODEL, prompt="hi", options={"temperature": -1})
    assert invalid.value.status_code == 400
    assert "temperature" in invalid.value.error


def test_bodies_are_json_whatever_the_content_type(server):
    # Ollama's documented examples are `curl URL -d '{...}'`, which labels the body as a form.
    body = json.dumps({"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}})
    headers = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    response = httpx.post(f"{server.url}/api/generate", content=body, headers=headers, timeout=60)
    assert response.status_code == 200
    assert response.json()["eval_count"] == 2
