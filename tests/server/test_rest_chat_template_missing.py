"""The REST door on a model without a chat template (a base model, issue 16 item 5): chat
requests get 400 with code `chat_template_missing` on /v1 and a message on /api, while plain
completions still work. The model is SmolLM2 with its template key renamed away."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cortexstream import models

from conftest import AUTH, serving

MESSAGES = [{"role": "user", "content": "Hi"}]


TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = models.resolve("smollm2").read_bytes()
    key = b"tokenizer.chat_template"
    assert data.count(key) == 1
    model = tmp_path_factory.mktemp("base") / "base-model.gguf"
    model.write_bytes(data.replace(key, b"tokenizer.chat_templatX"))  # same length: same layout
    return model


def running_server(*args: str):
    yield from serving(*args, "--kv-cache-tokens", "512", "--embedding-model", "none")


@pytest.fixture(scope="module")
def base_server(base_model: Path):
    yield from running_server("--model", str(base_model))


@pytest.fixture(scope="module")
def templated_server(base_model: Path):
    template = base_model.with_name("template.jinja")
    template.write_text(TEMPLATE)
    yield from running_server("--model", str(base_model), "--chat-template", str(template))


def test_openai_chat_is_400_chat_template_missing(base_server) -> None:
    for stream in (False, True):
        response = httpx.post(f"{base_server.url}/v1/chat/completions", headers=AUTH, timeout=60,
                              json={"model": "base-model", "messages": MESSAGES, "max_tokens": 2, "stream": stream})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("chat_template_missing", "messages"), error
        assert "chat_template" in error["message"]


def test_ollama_chat_is_400_naming_the_missing_template(base_server) -> None:
    response = httpx.post(f"{base_server.url}/api/chat", headers=AUTH, timeout=60,
                          json={"model": "base-model", "messages": MESSAGES, "stream": False, "options": {"num_predict": 2}})
    assert response.status_code == 400, response.text
    assert "no chat template" in response.json()["error"]


def test_plain_completion_still_works(base_server) -> None:
    response = httpx.post(f"{base_server.url}/v1/completions", headers=AUTH, timeout=60,
                          json={"model": "base-model", "prompt": "The capital of France is", "max_tokens": 2})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


def test_chat_template_option_serves_chat(templated_server) -> None:
    response = httpx.post(f"{templated_server.url}/v1/chat/completions", headers=AUTH, timeout=60,
                          json={"model": "base-model", "messages": MESSAGES, "max_tokens": 2})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] >= 3
