"""Structured output on the REST routes (issue 20): OpenAI's `response_format` and Ollama's
`format` become the engine's constraint keyword arguments; the engine parses, checks and
compiles them. Tool calling is not implemented yet, so `tools` (and the legacy `functions`)
are refused with a 400 instead of being silently ignored."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import cortexstream

from .errors import ApiError

_T = TypeVar("_T")

TOOLS_UNSUPPORTED = "tools are not supported yet"

#: The engine's names for a constraint's fields; a REST error names the request's field instead.
CONSTRAINT_PARAMS = ("json_schema", "response_format")


def _refuse_tools(param: str) -> ApiError:
    return ApiError(400, f"{TOOLS_UNSUPPORTED} (`{param}`)", param=param, code="invalid_request")


def openai_constraint(body: Any) -> dict:
    """Engine keyword arguments for an OpenAI body's `response_format`; refuses tool calling."""
    if body.tools:
        raise _refuse_tools("tools")
    if body.functions:
        raise _refuse_tools("functions")
    # "none" asks for no tool call, which is what happens without tools.
    if body.tool_choice not in (None, "none"):
        raise _refuse_tools("tool_choice")
    if body.function_call not in (None, "none"):
        raise _refuse_tools("function_call")
    return {} if body.response_format is None else {"response_format": body.response_format}


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


def refuse_ollama_tools(tools: list | None) -> None:
    if tools:
        raise _refuse_tools("tools")


async def naming_constraint_errors(work: Awaitable[_T], field: str) -> _T:
    """Awaits `work`; an engine error about the constraint names `field` (the request's own
    name for it, e.g. `response_format`) instead of the engine's keyword."""
    try:
        return await work
    except cortexstream.InvalidRequestError as error:
        if error.param in CONSTRAINT_PARAMS:
            raise ApiError(400, str(error), param=field, code=getattr(error, "code", None)) from error
        raise
