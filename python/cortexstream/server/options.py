"""A REST request's sampling fields as the engine's keyword arguments: one renaming table per
API. Only renaming happens here; the engine reads the values (types, ranges, `stop` as a string
or a list, `logit_bias` keys as token ids) and names the field at fault, with the words every
other front door uses. What is left in the routes is each API's own convention (OpenAI's two
names for the token limit and its `logprobs`, a negative seed or `num_predict`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: OpenAI request field -> the engine's option. `top_k`, `min_p`, `repetition_penalty`,
#: `stop_token_ids` and `ignore_eos` are not OpenAI's but vLLM's and llama.cpp's extensions.
#: `max_completion_tokens` is the newer name of `max_tokens`; listed later, it wins.
OPENAI_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
    "stop_token_ids": "stop_token_ids",
    "ignore_eos": "ignore_eos",
    "logit_bias": "logit_bias",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
}

#: Ollama `options` field -> the engine's option (the rest of Ollama's options, num_ctx,
#: mirostat, ..., are llama.cpp settings the engine does not have and are ignored, as before).
OLLAMA_OPTIONS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "repeat_penalty": "repetition_penalty",
    "repeat_last_n": "penalty_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


def renamed(fields: Mapping[str, Any], table: Mapping[str, str]) -> dict[str, Any]:
    """The fields `table` names that are set (not None), under the engine's names."""
    return {engine: fields[api] for api, engine in table.items() if fields.get(api) is not None}


def request_field(table: Mapping[str, str], engine_name: str, prefix: str = "") -> str | None:
    """Where a request following `table` holds the engine's option `engine_name` (the last
    request field renamed to it), to name it in an error; None if it holds none."""
    names = [api for api, engine in table.items() if engine == engine_name]
    return f"{prefix}{names[-1]}" if names else None
