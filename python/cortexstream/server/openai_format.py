"""OpenAI response objects built from engine results: envelopes, usage and log-probabilities."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache

import cortexstream


@dataclass(frozen=True)
class Envelope:
    """The fields every object of one response repeats (`id`, `object`, `created`, `model`)."""

    object: str
    model: str
    id: str
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def new(cls, object: str, model: str, id_prefix: str) -> Envelope:
        return cls(object=object, model=model, id=f"{id_prefix}-{uuid.uuid4().hex}")

    def body(self, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "choices": choices, **extra}


#: The finish reasons the engine shares with OpenAI; a strict OpenAI client knows no others.
_OPENAI_FINISH_REASONS = frozenset({"stop", "length", "tool_calls"})
#: Where the engine's own finish reason goes when OpenAI has no word for it.
ENGINE_FINISH_REASON_FIELD = "cortexstream_finish_reason"


def stop_reason_value(stop: cortexstream.StopReason | None) -> str | int | None:
    """vLLM's `stop_reason` (an extension of OpenAI's choices): the stop string or the stop token
    id that ended the request; null when something else did (the model's end-of-generation
    token, a length limit, a complete structured output, a cancellation)."""
    if stop is None:
        return None
    if stop.kind == "stop_string":
        return stop.stop_string
    if stop.kind == "stop_token":
        return stop.token_id
    return None


def finish_fields(reason: str | None, stop: cortexstream.StopReason | None = None) -> dict:
    """A choice's `finish_reason` in OpenAI's vocabulary, and on a finished choice vLLM's
    `stop_reason`. The engine's "cancelled" (the server closed the engine at shutdown while the
    request ran) becomes "length", which tells a client that the text was cut short, with the
    engine's reason in `cortexstream_finish_reason`."""
    if reason is None:
        return {"finish_reason": None}
    detail = {"stop_reason": stop_reason_value(stop)}
    if reason in _OPENAI_FINISH_REASONS:
        return {"finish_reason": reason, **detail}
    return {"finish_reason": "length", ENGINE_FINISH_REASON_FIELD: reason, **detail}


def usage_body(usages: list[cortexstream.Usage]) -> dict:
    """Token counts summed over every generation of the request (one per choice)."""
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    cached = sum(u.cached_prompt_tokens for u in usages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


class TokenTexts:
    """The text of single token ids, which log-probabilities are reported with."""

    def __init__(self, engine: cortexstream.Engine) -> None:
        # The same tokens come back again and again among the alternatives.
        self.text = lru_cache(maxsize=65536)(lambda token_id: engine.detokenize([token_id]))

    def chat_entry(self, logprobs: cortexstream.TokenLogprobs) -> dict:
        """One entry of a chat choice's `logprobs.content`."""

        def item(token_id: int, logprob: float, raw: bytes) -> dict:
            # `bytes` are the token's own bytes: a token that is part of a UTF-8 character
            # decodes alone to U+FFFD, so they cannot come from its text.
            return {"token": self.text(token_id), "logprob": logprob, "bytes": list(raw)}

        return {**item(logprobs.token_id, logprobs.logprob, logprobs.bytes),
                "top_logprobs": [item(token_id, lp, raw)
                                 for (token_id, lp), raw in zip(logprobs.top, logprobs.top_bytes)]}

    def chat_logprobs(self, entries: list[cortexstream.TokenLogprobs]) -> dict:
        return {"content": [self.chat_entry(e) for e in entries]}

    def completion_logprobs(self, entries: list[cortexstream.TokenLogprobs], text_offset: int) -> dict:
        """A completion choice's `logprobs` (legacy layout: parallel lists); offsets count from
        `text_offset`, the length of the text already returned for this choice."""
        tokens = [self.text(e.token_id) for e in entries]
        offsets = []
        for token in tokens:
            offsets.append(text_offset)
            text_offset += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{self.text(t): lp for t, lp in e.top} for e in entries],
            "text_offset": offsets,
        }
