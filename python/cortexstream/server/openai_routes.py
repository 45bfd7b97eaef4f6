"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models."""

from __future__ import annotations

import base64
import dataclasses
import struct
from collections.abc import AsyncIterator

import cortexstream
from fastapi import APIRouter, Request

from .errors import ApiError, from_engine_error
from .generation import Job, complete_all, engine_seed, fan_out, merge_streams, submit_all
from .openai_format import Envelope, TokenTexts, finish_fields, usage_body
from .options import OPENAI_OPTIONS, renamed
from .structured import naming_constraint_errors, openai_constraint, openai_history_message, openai_tool_calls
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIMessage,
    OpenAISampling,
    embedding_texts,
)
from .state import HeldLease, ReadyState
from .streaming import sse_event, sse_response

# The API key is checked by the `ApiKeys` middleware, before any body is read.
router = APIRouter(prefix="/v1")

def _sampling(body: OpenAISampling, logprobs: int | None) -> dict:
    """Engine keyword arguments: the sampling fields renamed, a negative seed as no seed, and
    the endpoint's `logprobs`; unset fields keep the engine's defaults."""
    kwargs = renamed(body.sampling_fields, OPENAI_OPTIONS)
    if "seed" in kwargs:
        kwargs["seed"] = engine_seed(kwargs["seed"])
    if logprobs is not None:
        kwargs["logprobs"] = logprobs
    return kwargs


def _choices(n: int, state) -> int:
    """`n`, checked: at least 1 and at most one request's fan-out limit."""
    limit = state.config.max_fan_out
    if not 1 <= n <= limit:
        raise ApiError(400, f"n must be between 1 and {limit} (half the server's {state.config.max_running} "
                            f"running sequences), got {n}", param="n", code="invalid_request")
    return n


def _check_fan_out(prompts: list, n: int, state) -> None:
    """Every prompt runs `n` times; together they may not exceed one request's fan-out limit."""
    limit = state.config.max_fan_out
    if len(prompts) * n > limit:
        raise ApiError(400, f"{len(prompts)} prompts x n={n} ask for {len(prompts) * n} generations; one request "
                            f"may ask for at most {limit} (half the server's {state.config.max_running} running "
                            "sequences)", param="prompt", code="invalid_request")


def _message_text(message: OpenAIMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    if any(part.type != "text" for part in message.content):
        raise ApiError(400, "only text content parts are supported", param="messages")
    return "".join(part.text or "" for part in message.content)


# --- chat ---------------------------------------------------------------------------------------


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, state: ReadyState, request: Request):
    # The model named, then the request's own checks: a refused request loads no model.
    served = state.served(body.model, embedding=False)
    messages = [openai_history_message(m, _message_text(m)) for m in body.messages]
    top = (body.top_logprobs or 0) if body.logprobs else None
    sampling = served.with_defaults({**_sampling(body, top), **openai_constraint(body)})
    jobs = fan_out([messages], chat=True, sampling=sampling, n=_choices(body.n, state), priority=body.priority)
    async with state.leased(body.model, embedding=False) as held:
        return await _chat_completions(body, jobs, held, request)


async def _chat_completions(body: ChatCompletionRequest, jobs: list[Job], held: HeldLease, request: Request):
    engine = held.engine
    envelope = Envelope.new("chat.completion", body.model, "chatcmpl")
    texts = TokenTexts(engine)
    if body.stream:
        streams = await naming_constraint_errors(submit_all(engine, jobs), "response_format")
        chunk_envelope = dataclasses.replace(envelope, object="chat.completion.chunk")
        return sse_response(held.hold_while(_chat_events(streams, chunk_envelope, texts, body.include_usage)))
    completions = await naming_constraint_errors(complete_all(engine, jobs, request.receive),
                                                 "response_format")
    choices = [
        {
            "index": i,
            "message": _assistant_message(c),
            "logprobs": texts.chat_logprobs(c.logprobs) if c.logprobs is not None else None,
            **finish_fields(c.finish_reason, c.stop_reason),
        }
        for i, c in enumerate(completions)
    ]
    return envelope.body(choices, usage=usage_body([c.usage for c in completions]))


def _assistant_message(completion: cortexstream.Completion) -> dict:
    """A choice's message: the text, and the calls when the model made some (content is then
    null if there was no other text, as OpenAI returns it)."""
    if not completion.tool_calls:
        return {"role": "assistant", "content": completion.text}
    return {"role": "assistant", "content": completion.text or None,
            "tool_calls": openai_tool_calls(completion.tool_calls)}


def _tool_call_deltas(first_index: int, calls: list) -> list[dict]:
    """OpenAI's streamed shape of complete calls: for each, a delta with its index, id, type,
    name and empty arguments, then one with the arguments."""
    deltas = []
    for offset, call in enumerate(calls):
        index = first_index + offset
        deltas.append({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                       "function": {"name": call.name, "arguments": ""}}]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]})
    return deltas


async def _chat_events(streams, envelope: Envelope, texts: TokenTexts, include_usage: bool) -> AsyncIterator[str]:
    # With include_usage every chunk carries `usage: null` and a last chunk with no choices has it.
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, finish: cortexstream.Chunk | None = None, logprobs=None) -> str:
        finish_reason, stop = (finish.finish_reason, finish.stop_reason) if finish is not None else (None, None)
        choice = {"index": index, "delta": delta, "logprobs": logprobs, **finish_fields(finish_reason, stop)}
        return sse_event(envelope.body([choice], **extra))

    usages = []
    calls_made = [0] * len(streams)
    try:
        for index in range(len(streams)):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for index, piece in merge_streams(streams):
            if piece.text or piece.logprobs is not None:
                logprobs = {"content": [texts.chat_entry(piece.logprobs)]} if piece.logprobs is not None else None
                yield chunk(index, {"content": piece.text}, logprobs=logprobs)
            for delta in _tool_call_deltas(calls_made[index], piece.tool_calls):
                yield chunk(index, delta)
            calls_made[index] += len(piece.tool_calls)
            if piece.finish_reason is not None:
                usages.append(piece.usage)
                yield chunk(index, {}, finish=piece)
        if include_usage:
            yield sse_event(envelope.body([], usage=usage_body(usages)))
        yield sse_event("[DONE]")
    except (cortexstream.CortexstreamError, ApiError) as error:
        yield sse_event(from_engine_error(error).openai_body())


# --- completions --------------------------------------------------------------------------------


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The prompt field as a list of prompts: a string and a token-id list are one prompt each.
    An empty list is no prompt at all (it would answer with no choices): a 400 naming `prompt`."""
    if isinstance(prompt, list) and not prompt:
        raise ApiError(400, "prompt must not be an empty list", param="prompt", code="invalid_request")
    if isinstance(prompt, str) or isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


@router.post("/completions")
async def completions(body: CompletionRequest, state: ReadyState, request: Request):
    # The model named, then the request's own checks: a refused request loads no model.
    served = state.served(body.model, embedding=False)
    sampling = served.with_defaults({**_sampling(body, body.logprobs), **openai_constraint(body)})
    prompts, n = _prompts(body.prompt), _choices(body.n, state)
    _check_fan_out(prompts, n, state)
    jobs = fan_out(prompts, chat=False, sampling=sampling, n=n, priority=body.priority)
    async with state.leased(body.model, embedding=False) as held:
        return await _completions(body, jobs, held, request)


async def _completions(body: CompletionRequest, jobs: list[Job], held: HeldLease, request: Request):
    engine = held.engine
    envelope = Envelope.new("text_completion", body.model, "cmpl")
    texts = TokenTexts(engine)
    if body.stream:
        streams = await naming_constraint_errors(submit_all(engine, jobs), "response_format")
        return sse_response(held.hold_while(_completion_events(streams, envelope, texts, body.include_usage)))
    completions = await naming_constraint_errors(complete_all(engine, jobs, request.receive),
                                                 "response_format")
    choices = [
        {
            "index": i,
            "text": c.text,
            "logprobs": texts.completion_logprobs(c.logprobs, 0) if c.logprobs is not None else None,
            **finish_fields(c.finish_reason, c.stop_reason),
        }
        for i, c in enumerate(completions)
    ]
    return envelope.body(choices, usage=usage_body([c.usage for c in completions]))


async def _completion_events(streams, envelope: Envelope, texts: TokenTexts, include_usage: bool) -> AsyncIterator[str]:
    extra = {"usage": None} if include_usage else {}
    text_offsets = [0] * len(streams)
    usages = []
    try:
        async for index, piece in merge_streams(streams):
            if not (piece.text or piece.logprobs is not None or piece.finish_reason is not None):
                continue
            logprobs = None
            if piece.logprobs is not None:
                logprobs = texts.completion_logprobs([piece.logprobs], text_offsets[index])
            text_offsets[index] += len(piece.text)
            choice = {"index": index, "text": piece.text, "logprobs": logprobs,
                      **finish_fields(piece.finish_reason, piece.stop_reason)}
            yield sse_event(envelope.body([choice], **extra))
            if piece.finish_reason is not None:
                usages.append(piece.usage)
        if include_usage:
            yield sse_event(envelope.body([], usage=usage_body(usages)))
        yield sse_event("[DONE]")
    except (cortexstream.CortexstreamError, ApiError) as error:
        yield sse_event(from_engine_error(error).openai_body())


# --- embeddings and models ----------------------------------------------------------------------


def _encode_embedding(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    # base64 of little-endian float32s: what the official client asks for by default.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, state: ReadyState):
    texts = embedding_texts(body.input)
    async with state.leased(body.model, embedding=True) as held:
        vectors, prompt_tokens = await held.embed_with_usage(texts)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_embedding(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def _model_object(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "cortexstream"}


@router.get("/models")
async def list_models(state: ReadyState):
    data = [_model_object(m.id, int(m.modified_at.timestamp())) for m in state.catalog.models]
    return {"object": "list", "data": data}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, state: ReadyState):
    model = state.catalog.find(model_id)
    return _model_object(model.id, int(model.modified_at.timestamp()))
