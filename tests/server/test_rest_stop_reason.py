"""vLLM's `stop_reason` on OpenAI choices (the stop string or token id that ended a choice,
null otherwise) and the `priority` extension of OpenAI and Ollama requests."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest
from conftest import AUTH

from cortexstream.server.generation import PRIORITY_MIN, fan_out
from cortexstream.server.openai_format import finish_fields

MODEL = "smollm2"
FOX = "The quick brown fox"  # greedy: " with a quick brown bear..."
GREEDY = {"temperature": 0, "seed": 7}
# "quick" completes first although "bear" is listed first.
STOPS = ["bear", "never", "quick"]


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", headers=AUTH, json=body, timeout=120)


def _stream_choices(server, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{server.url}{path}", headers=AUTH, json={**body, "stream": True}, timeout=120) as r:
        r.raise_for_status()
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    return [choice for e in events if e != "[DONE]" for choice in json.loads(e)["choices"]]


def test_a_completion_names_the_stop_string_streamed_or_not(server):
    body = {"model": MODEL, "prompt": FOX, "max_tokens": 24, "stop": STOPS, **GREEDY}
    choice = _post(server, "/v1/completions", body).json()["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "quick")
    streamed = _stream_choices(server, "/v1/completions", body)
    assert (streamed[-1]["finish_reason"], streamed[-1]["stop_reason"]) == ("stop", "quick")
    assert all("stop_reason" not in c for c in streamed[:-1])


def test_a_chat_choice_has_a_null_stop_reason_at_eos_and_at_length(server):
    messages = [{"role": "user", "content": "Say hello."}]
    body = {"model": MODEL, "messages": messages, "max_tokens": 64, **GREEDY}
    choice = _post(server, "/v1/chat/completions", body).json()["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", None)
    streamed = _stream_choices(server, "/v1/chat/completions", {**body, "max_tokens": 2})
    assert (streamed[-1]["finish_reason"], streamed[-1]["stop_reason"]) == ("length", None)


def test_a_stop_token_id_is_the_stop_reason_as_a_number():
    stop = SimpleNamespace(kind="stop_token", token_id=42, stop_string=None)
    assert finish_fields("stop", stop) == {"finish_reason": "stop", "stop_reason": 42}
    eos = SimpleNamespace(kind="eos", token_id=2, stop_string=None)
    assert finish_fields("stop", eos) == {"finish_reason": "stop", "stop_reason": None}
    assert finish_fields(None) == {"finish_reason": None}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": FOX, "max_tokens": 2}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
        ("/api/generate", {"prompt": FOX, "stream": False, "options": {"num_predict": 2}}),
        ("/api/chat", {"messages": [{"role": "user", "content": "Hi"}], "stream": False, "options": {"num_predict": 2}}),
    ],
)
def test_priority_is_accepted_and_checked_naming_the_field(server, path, body):
    body = {"model": MODEL, **body}
    assert _post(server, path, {**body, "priority": 7}).status_code == 200
    for bad in ("high", 2**31, True, 1.5):
        response = _post(server, path, {**body, "priority": bad})
        assert response.status_code == 400, (bad, response.text)
        error = response.json()["error"]  # OpenAI's object naming `param`, Ollama's message
        assert "priority" in (error["param"] if isinstance(error, dict) else error), (bad, error)


def test_fan_out_runs_the_extra_choices_of_a_request_below_its_priority():
    jobs = fan_out(["a", "b"], chat=False, sampling={}, n=2, priority=5)
    assert [j.sampling["priority"] for j in jobs] == [5, 4, 3, 2]
    assert [j.sampling["priority"] for j in fan_out(["a"], chat=False, sampling={}, n=2, priority=PRIORITY_MIN)] == [
        PRIORITY_MIN,
        PRIORITY_MIN,
    ]
