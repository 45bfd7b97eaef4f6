"""Structured output on the REST routes (issue 20): OpenAI `response_format` on chat and
completions (the official client's `.parse()` included), Ollama `format` on /api/chat and
/api/generate; an invalid schema is a 400 naming the field (tool calling: test_rest_tools.py)."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from conftest import AUTH
from pydantic import BaseModel, Field

MODEL = "smollm2"
ASK = [{"role": "user", "content": "Give your name and age as a JSON object."}]

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 0,
                                                                        "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


class Person(BaseModel):
    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=120)
    role: Literal["admin", "user"]


def test_openai_parse_returns_a_parsed_object(openai_client):
    completion = openai_client.beta.chat.completions.parse(
        model=MODEL, messages=ASK, response_format=Person, max_tokens=60, temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)


@pytest.mark.parametrize("seed", [1, 2])
def test_openai_json_schema_on_chat_streamed_and_not(openai_client, seed):
    spec = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    whole = openai_client.chat.completions.create(model=MODEL, messages=ASK, response_format=spec,
                                                  max_tokens=60, temperature=1, seed=seed)
    jsonschema.validate(json.loads(whole.choices[0].message.content), SCHEMA)
    chunks = openai_client.chat.completions.create(model=MODEL, messages=ASK, response_format=spec,
                                                   max_tokens=60, temperature=1, seed=seed, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_openai_json_object_on_completions(openai_client):
    result = openai_client.completions.create(model=MODEL, prompt="Alice is 30 years old. As JSON: ", max_tokens=40,
                                              temperature=0, extra_body={"response_format": {"type": "json_object"}})
    assert result.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(result.choices[0].text), dict)


def test_ollama_format_json_and_schema(ollama_client):
    reply = ollama_client.chat(model=MODEL, messages=ASK, format="json", options={"temperature": 0, "num_predict": 60})
    assert isinstance(json.loads(reply.message.content), dict)
    reply = ollama_client.generate(model=MODEL, prompt="Give your name and age as a JSON object.", format=SCHEMA,
                                   options={"temperature": 0, "num_predict": 60})
    jsonschema.validate(json.loads(reply.response), SCHEMA)


BAD_SCHEMA = {"type": "object", "properties": {"a": {"type": "nonsense"}}}


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=60)


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/chat/completions", {"response_format": {"type": "json_schema",
                                                      "json_schema": {"name": "x", "schema": BAD_SCHEMA}}},
         "response_format"),
        ("/v1/chat/completions", {"response_format": {"type": "yaml"}}, "response_format"),
        ("/v1/completions", {"prompt": "Hi", "response_format": {"type": "json_schema", "json_schema": {}}},
         "response_format"),
        ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
        ("/api/chat", {"format": BAD_SCHEMA, "stream": False}, "format"),
        ("/api/chat", {"format": "xml", "stream": False}, "format"),
        ("/api/generate", {"prompt": "Hi", "format": BAD_SCHEMA, "stream": False}, "format"),
    ],
)
def test_bad_structured_output_requests_are_400_naming_the_field(server, path, body, param):
    body = {"model": MODEL, "max_tokens": 4, "messages": ASK, **body}
    response = post(server, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if path.startswith("/v1"):
        assert error["param"] == param, error
    else:
        assert param in error, error
