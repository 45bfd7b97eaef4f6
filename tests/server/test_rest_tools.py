"""Tool calling on the REST routes with the official clients: OpenAI's `tools`, `tool_choice`
(auto / required / named), `parallel_tool_calls`, history with assistant `tool_calls` and
`tool` messages, `message.tool_calls`, streamed `tool_calls` deltas in OpenAI's chunk shape and
`finish_reason: "tool_calls"`; Ollama's `tools` and `tool_calls` (arguments as an object).

Two models: SmolLM2 (the session server; its template has no tool syntax, so the generic JSON
form) and the tiny random-weight Qwen 3 fixture served with a compact Hermes-syntax template
(`<tool_call>...</tool_call>`, as Qwen's and Hermes' templates write calls). With a required or named choice the output is constrained,
so even these models return calls whose arguments validate against the tool's schema."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from conftest import API_KEY, AUTH, REPO, serving

FIXTURES = REPO / "tests" / "fixtures"

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"hours": {"type": "integer", "minimum": 0, "maximum": 23}, "zone": {"type": "string",
                                                                                     "maxLength": 12}},
    "required": ["hours", "zone"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                      "parameters": WEATHER_PARAMETERS}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone.",
                                      "parameters": TIME_PARAMETERS}},
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED_TIME = {"type": "function", "function": {"name": "get_time"}}


#: A compact Hermes-syntax template for the tiny Qwen 3 fixture, whose context is 256 tokens of a
#: 384-token vocabulary: the real Qwen templates' tool preamble alone is ~900 of its tokens. The
#: real templates' rendering is checked byte for byte in core/tests/tool_templates.rs.
HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
Tools: {% for tool in tools %}{{ tool.function.name }}{% if not loop.last %}, {% endif %}{% endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message.role }}
{% if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>
{{ {"name": call.function.name, "arguments": call.function.arguments} | tojson }}
</tool_call>{% endfor %}{% else %}{{ message.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def qwen3_client(tmp_path_factory: pytest.TempPathFactory):
    template: Path = tmp_path_factory.mktemp("qwen3-tools") / "hermes.jinja"
    template.write_text(HERMES_TEMPLATE)
    for running in serving("--model", str(FIXTURES / "qwen3" / "tiny-f32.gguf"), "--chat-template", str(template),
                           "--kv-cache-tokens", "2048", "--embedding-model", "none", "--api-key", API_KEY):
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        yield client, client.models.list().data[0].id


@pytest.fixture(scope="module")
def smollm2(openai_client):
    return openai_client, openai_client.models.list().data[0].id


def assert_valid(calls, names=None) -> None:
    assert calls, "expected tool calls"
    for call in calls:
        assert call.type == "function" and call.id
        if names is not None:
            assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def round_trip(client, model: str, tool_choice, stream: bool, parallel: bool | None = None) -> None:
    """call -> tool result -> answer, with the first turn forced to call."""
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    if stream:
        message_calls = streamed_calls(client, model, tool_choice, **extra)
    else:
        response = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice=tool_choice,
                                                  temperature=0, max_tokens=150, **extra)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None
        message_calls = choice.message.tool_calls
    names = ["get_time"] if tool_choice == NAMED_TIME else None
    assert_valid(message_calls, names)
    if parallel is False:
        assert len(message_calls) == 1
    history = [
        *ASK,
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": c.id, "type": "function",
                         "function": {"name": c.function.name, "arguments": c.function.arguments}}
                        for c in message_calls]},
        *({"role": "tool", "tool_call_id": c.id, "content": "22 degrees"} for c in message_calls),
    ]
    answer = client.chat.completions.create(model=model, messages=history, tools=TOOLS, tool_choice="none",
                                            temperature=0, max_tokens=2)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.tool_calls is None
    assert isinstance(answer.choices[0].message.content, str)


def streamed_calls(client, model: str, tool_choice, **extra):
    """Reads a streamed answer; checks OpenAI's delta shape and rebuilds the calls from it."""
    stream = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice=tool_choice,
                                            temperature=0, max_tokens=150, stream=True, **extra)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        (choice,) = chunk.choices
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            if delta.index not in calls:
                # The first delta of a call: id, type, name and empty arguments.
                assert delta.id and delta.type == "function" and delta.function.name
                assert delta.function.arguments == ""
                assert delta.index == len(calls)
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            else:
                assert delta.id is None and delta.function.name is None
                calls[delta.index]["arguments"] += delta.function.arguments
    assert finish == "tool_calls"
    return [openai.types.chat.ChatCompletionMessageToolCall(
        id=c["id"], type="function", function={"name": c["name"], "arguments": c["arguments"]})
        for c in calls.values()]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("tool_choice", ["required", NAMED_TIME], ids=["required", "named"])
def test_smollm2_generic_round_trip(smollm2, tool_choice, stream) -> None:
    client, model = smollm2
    round_trip(client, model, tool_choice, stream, parallel=False)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("tool_choice", ["required", NAMED_TIME], ids=["required", "named"])
def test_qwen3_hermes_round_trip(qwen3_client, tool_choice, stream) -> None:
    client, model = qwen3_client
    round_trip(client, model, tool_choice, stream, parallel=False)


def test_parallel_calls_may_be_several(qwen3_client) -> None:
    client, model = qwen3_client
    response = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                              temperature=1.0, seed=3, max_tokens=300)
    choice = response.choices[0]
    assert choice.finish_reason in ("tool_calls", "length")
    if choice.finish_reason == "tool_calls":
        assert_valid(choice.message.tool_calls)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_auto_choice_answers_or_calls(smollm2, stream) -> None:
    client, model = smollm2
    if stream:
        pieces = list(client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, temperature=0,
                                                     max_tokens=40, stream=True))
        assert pieces[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")
        return
    response = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, temperature=0, max_tokens=40)
    choice = response.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
    else:
        assert choice.finish_reason in ("stop", "length") and choice.message.content


def test_ollama_chat_with_tools(ollama_client, smollm2) -> None:
    _, model = smollm2
    # Ollama has no tool_choice: the model decides (auto). Whatever it does, the reply has
    # Ollama's shape; any call has its arguments as an object.
    response = ollama_client.chat(model=model, messages=ASK, tools=TOOLS, options={"temperature": 0,
                                                                                    "num_predict": 40})
    assert response.message.role == "assistant"
    for call in response.message.tool_calls or []:
        assert isinstance(call.function.arguments, dict)
    history = [
        *ASK,
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "content": "22 degrees", "tool_name": "get_weather"},
    ]
    answer = ollama_client.chat(model=model, messages=history, tools=TOOLS, options={"temperature": 0,
                                                                                      "num_predict": 8})
    assert answer.done and isinstance(answer.message.content, str)


def test_ollama_reply_carries_calls_as_objects(server, smollm2) -> None:
    """The reply's `tool_calls` in Ollama's shape, checked over raw HTTP with a forced call of one
    named function (`tool_choice` is an extension Ollama's own API lacks)."""
    _, model = smollm2
    response = httpx.post(f"{server.url}/api/chat", headers=AUTH, timeout=120, json={
        "model": model, "messages": ASK, "tools": TOOLS, "stream": False, "tool_choice": NAMED_TIME,
        "options": {"temperature": 0, "num_predict": 150}})
    assert response.status_code == 200, response.text
    message = response.json()["message"]
    assert message.get("tool_calls"), response.json()
    for call in message["tool_calls"]:
        jsonschema.validate(call["function"]["arguments"], SCHEMAS[call["function"]["name"]])
    assert response.json()["done_reason"] == "stop"


@pytest.mark.parametrize(
    ("change", "param", "fragment"),
    [
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools", "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools",
         "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}]}, "tools", "parameters"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
        ({"messages": [*ASK, {"role": "tool", "content": "22"}], "tools": TOOLS}, "messages", "tool_call_id"),
        ({"messages": [*ASK, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "abc", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}, "messages",
         "arguments"),
        ({"functions": [{"name": "f"}]}, "functions", "tools"),
        ({"function_call": "auto"}, "function_call", "tool_choice"),
    ],
)
def test_bad_tools_are_400_naming_the_field(server, smollm2, change, param, fragment) -> None:
    _, model = smollm2
    before = server.metrics()
    body = {"model": model, "messages": ASK, "max_tokens": 4, **change}
    response = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=60, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert fragment in error["message"], error
    after = server.metrics()
    # Nothing was queued: the request was refused at submit.
    key = "cortexstream_requests_submitted_total"
    assert after[key] == before[key]
