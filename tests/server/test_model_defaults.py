"""A config file's `[models.defaults]` on the real app with SmolLM2: a request that leaves an
option unset gets the model's default, a request's own value wins, on OpenAI's and Ollama's
routes; a model without defaults is untouched. And embeddings count for a key's token limit.

In-process (no lifespan): one registry for the module, each test its own app over it.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cortexstream.server.app import create_app
from cortexstream.server.config_file import ApiKey
from cortexstream.server.served import EngineOptions, ModelEntry
from cortexstream.server.state import ServerConfig, ServerState

ENGINE = EngineOptions(max_running=4, kv_cache_tokens=2048, context_length=512)
#: Greedy, so only the length differs between the two names.
SHORT = {"max_tokens": 2, "temperature": 0.0}


@pytest.fixture(scope="module")
def loaded_state():
    config = ServerConfig(models=(
        ModelEntry("short", "smollm2", engine=ENGINE, defaults=SHORT),
        ModelEntry("plain", "smollm2", engine=ENGINE),
        ModelEntry("minilm", "minilm", embedding=True),
    ), engine=ENGINE)
    state = ServerState(config)
    state.load()
    assert state.ready, state.load_error
    yield state
    state.close()


def call(state, requests, keys=()):
    # A clock that stands still: no token comes back while the test runs.
    app = create_app(ServerConfig(api_keys=tuple(keys)), clock=lambda: 0.0)
    app.state.server = state

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     timeout=120) as client:
            return [await client.post(path, json=body, headers=headers) for path, body, headers in requests]

    return asyncio.run(main())


PROMPT = "Once upon a time"


def test_an_unset_option_takes_the_model_default_and_a_request_value_wins(loaded_state):
    default, own, plain, ollama_default, ollama_own, ollama_unlimited = call(loaded_state, [
        ("/v1/completions", {"model": "short", "prompt": PROMPT}, {}),
        ("/v1/completions", {"model": "short", "prompt": PROMPT, "max_tokens": 5}, {}),
        ("/v1/completions", {"model": "plain", "prompt": PROMPT, "max_tokens": 7, "temperature": 0}, {}),
        ("/api/generate", {"model": "short", "prompt": PROMPT, "stream": False}, {}),
        ("/api/generate", {"model": "short", "prompt": PROMPT, "stream": False, "options": {"num_predict": 4}}, {}),
        ("/api/generate", {"model": "short", "prompt": PROMPT, "stream": False,
                           "options": {"num_predict": -1, "stop": ["."]}}, {}),
    ])
    for response in (default, own, plain, ollama_default, ollama_own, ollama_unlimited):
        assert response.status_code == 200, response.text
    assert default.json()["usage"]["completion_tokens"] == 2
    assert default.json()["choices"][0]["finish_reason"] == "length"
    assert own.json()["usage"]["completion_tokens"] == 5
    assert plain.json()["usage"]["completion_tokens"] == 7, "a model without defaults is untouched"
    # Greedy by default: the two-token answer starts the seven-token one of the same model file.
    assert plain.json()["choices"][0]["text"].startswith(default.json()["choices"][0]["text"])
    assert ollama_default.json()["eval_count"] == 2
    assert ollama_own.json()["eval_count"] == 4
    # num_predict -1 asks for no limit: it overrides the default too.
    assert ollama_unlimited.json()["eval_count"] > 2


def test_a_chat_request_takes_the_defaults_too(loaded_state):
    [response] = call(loaded_state, [
        ("/v1/chat/completions", {"model": "short", "messages": [{"role": "user", "content": "Hi"}]}, {}),
    ])
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 2


def test_embedding_tokens_count_for_the_key_token_limit(loaded_state):
    key = ApiKey(name="alice", secret="alice-secret", tokens_per_minute=1000)
    headers = {"Authorization": "Bearer alice-secret"}
    first, second, ollama, third = call(loaded_state, [
        ("/v1/embeddings", {"model": "minilm", "input": ["hello world", "a second text"]}, headers),
        ("/v1/embeddings", {"model": "minilm", "input": "one more"}, headers),
        ("/api/embed", {"model": "minilm", "input": "and one on ollama"}, headers),
        ("/v1/embeddings", {"model": "minilm", "input": "x"}, headers),
    ], keys=[key])
    used = first.json()["usage"]["total_tokens"]
    assert used > 0
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - used)
    used += second.json()["usage"]["total_tokens"]
    assert ollama.headers["x-ratelimit-remaining-tokens"] == str(1000 - used)
    used += ollama.json()["prompt_eval_count"]
    assert third.headers["x-ratelimit-remaining-tokens"] == str(1000 - used)
