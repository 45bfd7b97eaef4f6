"""Structured output and tool calling on the REST routes (issue 20): OpenAI's
`response_format`, `tools`, `tool_choice` and `parallel_tool_calls`, and Ollama's `format`
and `tools`, become the engine's keyword arguments; the engine parses, checks and compiles
them, renders the tools with the model's chat template and parses the calls back. The legacy
`functions` / `function_call` are refused by name (use `tools` / `tool_choice`)."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import cortexstream

from .errors import ApiError

_T = TypeVar("_T")

#: The engine's names for a constraint's fields; a REST error names the request's field instead.
CONSTRAINT_PARAMS = ("json_schema", "response_format")


def _legacy(param: str, replacement: str) -> ApiError:
    return ApiError(400, f"`{param}` is deprecated and not supported; use `{replacement}`",
                    param=param, code="invalid_request")


def openai_constraint(body: Any) -> dict:
    """Engine keyword arguments for an OpenAI body's `response_format` and tools."""
    if body.functions:
        raise _legacy("functions", "tools")
    if body.function_call is not None:
        raise _legacy("function_call", "tool_choice")
    kwargs: dict = {} if body.response_format is None else {"response_format": body.response_format}
    if body.tools is not None:
        kwargs["tools"] = body.tools
    if body.tool_choice is not None:
        kwargs["tool_choice"] = body.tool_choice
    if getattr(body, "parallel_tool_calls", None) is not None:
        kwargs["parallel_tool_calls"] = body.parallel_tool_calls
    return kwargs


def openai_history_message(message: Any, content: str) -> dict:
    """A chat message for the engine: role and text, and the tool fields of OpenAI's shape.
    A call's `arguments` arrive as JSON text; the chat templates expect an object."""
    out: dict = {"role": message.role, "content": content}
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [_history_call(call) for call in message.tool_calls]
    return out


def _history_call(call: dict) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise ApiError(400, "each of a message's `tool_calls` needs a `function` object", param="messages",
                       code="invalid_request")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as error:
            raise ApiError(400, f"a tool call's `function.arguments` is not JSON: {error}", param="messages",
                           code="invalid_request") from error
    return {**call, "type": call.get("type", "function"), "function": {**function, "arguments": arguments}}


def openai_tool_calls(calls: list) -> list[dict]:
    """`message.tool_calls` of a chat completion."""
    return [{"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls]


def ollama_history(messages: list) -> list[dict]:
    """Ollama's chat messages for the engine. Ollama's tool calls and tool results carry no ids:
    each call gets one, and each `tool` message answers the earliest call not yet answered."""
    unanswered: list[tuple[str, str]] = []
    out = []
    for index, message in enumerate(messages):
        item: dict = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = []
            for call_index, call in enumerate(message.tool_calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise ApiError(400, f"messages[{index}].tool_calls[{call_index}] needs a `function` object",
                                   param="messages", code="invalid_request")
                call_id = f"c{index:05d}{call_index:03d}"  # 9 characters, as Mistral templates need
                item["tool_calls"].append({"id": call_id, "type": "function", "function": function})
                unanswered.append((call_id, function.get("name", "")))
        if message.role == "tool":
            call_id, name = unanswered.pop(0) if unanswered else ("", "")
            item["tool_call_id"] = call_id
            item["name"] = message.tool_name or name
        out.append(item)
    return out


def ollama_tool_calls(calls: list) -> list[dict]:
    """`message.tool_calls` of an Ollama chat reply: arguments as an object."""
    return [{"function": {"name": call.name, "arguments": json.loads(call.arguments)}} for call in calls]


def ollama_constraint(output_format: str | dict | None) -> dict:
    """Engine keyword arguments for Ollama's `format`: `"json"` or a JSON schema object."""
    if output_format is None or output_format == "":
        return {}
    if output_format == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(output_format, dict):
        return {"json_schema": output_format}
    raise ApiError(400, f'format must be "json" or a JSON schema object, got {output_format!r:.40}',
                   param="format", code="invalid_request")


async def naming_constraint_errors(work: Awaitable[_T], field: str) -> _T:
    """Awaits `work`; an engine error about the constraint names `field` (the request's own
    name for it, e.g. `response_format`) instead of the engine's keyword."""
    try:
        return await work
    except cortexstream.InvalidRequestError as error:
        if error.param in CONSTRAINT_PARAMS:
            raise ApiError(400, str(error), param=field, code=getattr(error, "code", None)) from error
        raise
