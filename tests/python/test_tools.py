"""Tool calling through the Python module: `chat(..., tools=, tool_choice=)` returns calls whose
arguments validate against the tool's schema (SmolLM2's template has no tool syntax, so the
generic JSON form is used and, with a required or named choice, constrained), streams carry
the calls in chunks, and malformed tools are an `InvalidRequestError` naming the field before
anything is queued."""

from __future__ import annotations

import json

import jsonschema
import pytest

import cortexstream

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": WEATHER_PARAMETERS}}
TIME_PARAMETERS = {"type": "object", "properties": {"hours": {"type": "integer", "minimum": 0, "maximum": 23}},
                   "required": ["hours"], "additionalProperties": False}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": TIME_PARAMETERS}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}


def assert_valid_calls(calls) -> None:
    assert calls, "expected at least one call"
    for call in calls:
        assert call.id and len(call.id) == 9
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_required_choice_returns_a_call_that_validates(engine, seed) -> None:
    completion = engine.chat(ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False,
                             temperature=1.0, seed=seed, max_tokens=120)
    assert completion.finish_reason == "tool_calls", completion
    assert len(completion.tool_calls) == 1
    assert_valid_calls(completion.tool_calls)
    assert completion.text == ""


def test_named_choice_calls_that_function(engine) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    completion = engine.chat(ASK, tools=[WEATHER, TIME], tool_choice=named, temperature=0, max_tokens=120)
    assert completion.finish_reason == "tool_calls", completion
    assert [c.name for c in completion.tool_calls] == ["get_time"] * len(completion.tool_calls)
    assert_valid_calls(completion.tool_calls)


def test_streamed_calls_match_the_completion(engine) -> None:
    stream = engine.stream_chat(ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=120)
    chunks = list(stream)
    streamed = [call for chunk in chunks for call in chunk.tool_calls]
    completion = stream.completion
    assert chunks[-1].finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in streamed] == [(c.name, c.arguments) for c in completion.tool_calls]
    assert "".join(chunk.text for chunk in chunks) == ""  # the call's JSON never leaks as text
    assert_valid_calls(streamed)


def test_round_trip_with_the_tool_result_in_the_history(engine) -> None:
    first = engine.chat(ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=120)
    (call,) = first.tool_calls
    history = [
        *ASK,
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": call.id, "type": "function",
                         "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": "22 degrees and sunny"},
    ]
    answer = engine.chat(history, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=16)
    assert answer.tool_calls == [] and answer.finish_reason in ("stop", "length")
    assert answer.text


def test_tool_choice_none_leaves_the_prompt_as_without_tools(engine) -> None:
    plain = engine.chat(ASK, temperature=0, max_tokens=4)
    none = engine.chat(ASK, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=4)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert none.text == plain.text


def test_auto_choice_describes_the_tools_and_parses_what_comes(engine) -> None:
    plain = engine.chat(ASK, temperature=0, max_tokens=4)
    auto = engine.chat(ASK, tools=[WEATHER], temperature=0, max_tokens=60)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens  # the tools are in the prompt
    if auto.tool_calls:
        assert auto.finish_reason == "tool_calls"
        assert all(c.name == "get_weather" for c in auto.tool_calls)
    else:
        assert auto.finish_reason in ("stop", "length") and auto.text


@pytest.mark.parametrize(
    ("kwargs", "param", "fragment"),
    [
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools",
         "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "object"}}]}, "tools",
         "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}]}, "tools", "parameters"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
         "`nope`"),
        ({"tool_choice": "required"}, "tool_choice", "tools"),
        ({"tools": [WEATHER], "tool_choice": "required", "json_schema": {"type": "object"}}, "tool_choice",
         "json_schema"),
    ],
)
def test_malformed_tools_are_refused_naming_the_field(engine, kwargs, param, fragment) -> None:
    before = engine.metrics()["requests_submitted"]
    with pytest.raises(cortexstream.InvalidRequestError) as raised:
        engine.chat(ASK, max_tokens=4, **kwargs)
    assert raised.value.param == param, raised.value
    assert fragment in str(raised.value)
    assert engine.metrics()["requests_submitted"] == before


def test_a_tool_message_without_its_call_id_is_refused(engine) -> None:
    history = [*ASK, {"role": "tool", "content": "22 degrees"}]
    with pytest.raises(cortexstream.InvalidRequestError) as raised:
        engine.chat(history, tools=[WEATHER], max_tokens=4)
    assert raised.value.param == "messages"
    assert "messages[1].tool_call_id" in str(raised.value)


def test_tools_need_chat_messages(engine) -> None:
    with pytest.raises(cortexstream.InvalidRequestError) as raised:
        engine.generate("Hello", tools=[WEATHER], max_tokens=4)
    assert raised.value.param == "tools"


def test_a_call_cut_short_by_max_tokens_ends_length_with_no_call(engine) -> None:
    completion = engine.chat(ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=5)
    assert completion.finish_reason == "length"
    assert completion.tool_calls == []  # never a half call claimed complete
    assert completion.text.startswith('{"tool_calls"')
