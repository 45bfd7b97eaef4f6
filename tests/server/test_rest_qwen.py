"""The REST door on a Qwen 3 GGUF (the tiny random-weight fixture `tests/fixtures/qwen3/`,
converted by llama.cpp's converter) served with the real Qwen 3 chat template
(`--chat-template`): OpenAI and Ollama chat requests render the conversation exactly as
transformers does (`tests/fixtures/chat_templates.json`), so they prompt and generate the same
tokens as a text completion of transformers' rendering."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from conftest import AUTH, REPO, serving

FIXTURES = REPO / "tests" / "fixtures"
TEMPLATE = "Qwen-Qwen3-0.6B"
CONVERSATION = "system_user"


def transformers_case() -> tuple[str, list[dict[str, str]], str]:
    """The template source, the conversation, and transformers' rendering with the generation prompt."""
    fixture = json.loads((FIXTURES / "chat_templates.json").read_text())
    (case,) = [c for c in fixture["cases"] if c["template"] == TEMPLATE and c["conversation"] == CONVERSATION
               and c["add_generation_prompt"]]
    return fixture["templates"][TEMPLATE]["source"], fixture["conversations"][CONVERSATION], case["rendered"]


@pytest.fixture(scope="module")
def qwen3_server(tmp_path_factory: pytest.TempPathFactory):
    source, _, _ = transformers_case()
    template: Path = tmp_path_factory.mktemp("qwen3") / "qwen3.jinja"
    template.write_text(source)
    yield from serving("--model", str(FIXTURES / "qwen3" / "tiny-f32.gguf"), "--chat-template", str(template),
                       "--kv-cache-tokens", "512", "--embedding-model", "none")


def served_model_id(server) -> str:
    response = httpx.get(f"{server.url}/v1/models", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    (model,) = response.json()["data"]
    return model["id"]


def post(server, path: str, body: dict) -> dict:
    response = httpx.post(f"{server.url}{path}", headers=AUTH, timeout=120, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_openai_chat_prompts_and_generates_as_the_transformers_rendering(qwen3_server) -> None:
    _, messages, rendered = transformers_case()
    model = served_model_id(qwen3_server)
    chat = post(qwen3_server, "/v1/chat/completions",
                {"model": model, "messages": messages, "max_tokens": 6, "temperature": 0})
    text = post(qwen3_server, "/v1/completions",
                {"model": model, "prompt": rendered, "max_tokens": 6, "temperature": 0})
    assert chat["usage"]["prompt_tokens"] == text["usage"]["prompt_tokens"]
    assert chat["choices"][0]["message"]["content"] == text["choices"][0]["text"]


def test_ollama_chat_prompts_as_the_transformers_rendering(qwen3_server) -> None:
    _, messages, rendered = transformers_case()
    model = served_model_id(qwen3_server)
    chat = post(qwen3_server, "/api/chat",
                {"model": model, "messages": messages, "stream": False, "options": {"num_predict": 6}})
    text = post(qwen3_server, "/api/generate",
                {"model": model, "prompt": rendered, "raw": True, "stream": False, "options": {"num_predict": 6}})
    assert chat["prompt_eval_count"] == text["prompt_eval_count"]
