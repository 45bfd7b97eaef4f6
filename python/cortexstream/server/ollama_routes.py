"""Ollama-compatible endpoints: /api/generate, /api/chat, /api/embed, /api/embeddings, /api/tags,
/api/show, /api/ps and /api/version. Durations are in nanoseconds, as Ollama reports them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import cortexstream
from fastapi import APIRouter, Request
from starlette.types import Receive

from .catalog import OLLAMA_DEFAULT_TAG, ServedModel
from .errors import ApiError, from_engine_error
from .generation import Job, is_negative_int, complete_all, engine_seed, merge_streams, submit_all
from .options import OLLAMA_OPTIONS, renamed, request_field
from .schemas import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaShowRequest,
    embedding_texts,
)
from .served import is_zero_keep_alive
from .state import ReadyState, ServerState
from .structured import CONSTRAINT_PARAMS, ollama_constraint, ollama_history, ollama_tool_calls
from .streaming import ndjson_line, ndjson_response

# The API key is checked by the `ApiKeys` middleware, before any body is read.
router = APIRouter(prefix="/api")

#: The engine's name of a sampling field -> where an Ollama request holds it.
_OPTION_FIELDS = {engine: request_field(OLLAMA_OPTIONS, engine, "options.") for engine in OLLAMA_OPTIONS.values()}

#: An engine error about the constraint is about the request's `format`.
_FORMAT_FIELDS = dict.fromkeys(CONSTRAINT_PARAMS, "format")


def _in_ollama_terms(error: Exception, fields: dict[str, str]) -> ApiError:
    """`error` with the field at fault named as the Ollama request spells it: the engine says
    `max_tokens` where the request said `options.num_predict`, `messages` for a templated prompt."""
    error = from_engine_error(error)
    fields = {**_OPTION_FIELDS, **fields}
    if error.param in fields:
        error.param = fields[error.param]
    return error


def _load_response(model: str, content: dict, done_reason: str = "load") -> dict:
    """Ollama's answer to a request with nothing to generate: it only loads (or unloads) the model."""
    return {"model": model, "created_at": _timestamp(), **content, "done": True, "done_reason": done_reason}


async def _load_or_unload(state: ServerState, model: str, keep_alive, content: dict) -> dict:
    """An empty request: Ollama's way to preload a model (it loads and its keep-alive starts),
    or with `keep_alive: 0` to unload it now (requests running on it finish first)."""
    served = state.served(model, embedding=False)
    if is_zero_keep_alive(keep_alive):
        await asyncio.to_thread(state.registry.unload, served.id)
        return _load_response(model, content, "unload")
    async with state.leased(model, embedding=False, keep_alive=keep_alive):
        pass
    return _load_response(model, content)


def _sampling(options: dict) -> dict:
    """Engine keyword arguments of Ollama's `options`; the engine checks them."""
    kwargs = renamed(options, OLLAMA_OPTIONS)
    # num_predict -1 (no limit) and -2 (fill the context) both mean "until the context is full".
    # None, not absent: it also overrides a model's default max_tokens.
    if is_negative_int(kwargs.get("max_tokens")):
        kwargs["max_tokens"] = None
    if "seed" in kwargs:
        kwargs["seed"] = engine_seed(kwargs["seed"])
    return kwargs


def _timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 in UTC with a `Z`, as Ollama writes `created_at`."""
    moment = moment or datetime.now(UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _final_fields(result: cortexstream.Completion | cortexstream.Chunk, load_ns: int) -> dict:
    """The statistics of Ollama's last object, from a completion or a stream's last chunk;
    `load_ns` is the time the request waited for its model (loading it, if it was not)."""
    usage, timings = result.usage, result.timings
    return {
        "done": True,
        # Ollama says "stop" after tool calls too.
        "done_reason": "stop" if result.finish_reason == "tool_calls" else result.finish_reason,
        "total_duration": timings.total_ns + load_ns,
        "load_duration": load_ns,
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": timings.prefill_ns,
        "eval_count": usage.completion_tokens,
        "eval_duration": timings.decode_ns,
    }


#: Shapes a completion or chunk into Ollama's `response` or `message` field.
Content = Callable[[cortexstream.Completion | cortexstream.Chunk], dict]


async def _respond(state: ServerState, model: str, keep_alive, job: Job, stream: bool, content: Content,
                   receive: Receive, fields: dict[str, str]):
    """Runs `job` on the model `model` names, holding its lease until the answer is complete;
    `content(result)` shapes generated text and calls (`response` or `message`). An error names
    its field as `fields` maps the engine's names (plus every option)."""
    started = time.perf_counter_ns()
    try:
        served = state.served(model, embedding=False)
        job = dataclasses.replace(job, sampling=served.with_defaults(job.sampling))
        async with state.leased(model, embedding=False, keep_alive=keep_alive) as held:
            load_ns = time.perf_counter_ns() - started
            if not stream:
                [completion] = await complete_all(held.engine, [job], receive)
                return {"model": model, "created_at": _timestamp(), **content(completion),
                        **_final_fields(completion, load_ns)}
            streams = await submit_all(held.engine, [job])
            return ndjson_response(held.hold_while(_stream_lines(streams, model, content, load_ns)))
    except (cortexstream.CortexstreamError, ApiError) as error:
        raise _in_ollama_terms(error, fields) from error


async def _stream_lines(streams, model: str, content: Content, load_ns: int) -> AsyncIterator[str]:
    try:
        async for _, chunk in merge_streams(streams):
            head = {"model": model, "created_at": _timestamp(), **content(chunk)}
            if chunk.finish_reason is not None:
                yield ndjson_line({**head, **_final_fields(chunk, load_ns)})
            elif chunk.text or chunk.tool_calls:
                yield ndjson_line({**head, "done": False})
    except (cortexstream.CortexstreamError, ApiError) as error:
        yield ndjson_line(from_engine_error(error).ollama_body())


@router.post("/generate")
async def generate(body: OllamaGenerateRequest, state: ReadyState, request: Request):
    if not body.prompt:
        return await _load_or_unload(state, body.model, body.keep_alive, {"response": ""})
    sampling = {**_sampling(body.options), **ollama_constraint(body.format), "priority": body.priority}
    if body.raw:
        job = Job(body.prompt, chat=False, sampling=sampling)
    else:
        # Like Ollama, a non-raw prompt goes through the model's chat template as a user turn.
        system = [{"role": "system", "content": body.system}] if body.system else []
        messages = [*system, {"role": "user", "content": body.prompt}]
        job = Job(messages, chat=True, sampling=sampling)
    # Templated, the prompt is the engine's `messages`: an error about it is about `prompt`.
    return await _respond(state, body.model, body.keep_alive, job, body.stream, lambda result: {"response": result.text},
                          request.receive, {"messages": "prompt", **_FORMAT_FIELDS})


@router.post("/chat")
async def chat(body: OllamaChatRequest, state: ReadyState, request: Request):
    if not body.messages:
        # Ollama documents an empty message list as the chat way to preload (or unload) a model.
        return await _load_or_unload(state, body.model, body.keep_alive, {"message": {"role": "assistant", "content": ""}})
    tools = {"tools": body.tools} if body.tools else {}
    if body.tool_choice is not None:
        tools["tool_choice"] = body.tool_choice
    sampling = {**_sampling(body.options), **ollama_constraint(body.format), "priority": body.priority, **tools}
    job = Job(ollama_history(body.messages), chat=True, sampling=sampling)
    return await _respond(state, body.model, body.keep_alive, job, body.stream,
                          lambda result: {"message": _chat_message(result)},
                          request.receive, _FORMAT_FIELDS)


def _chat_message(result: cortexstream.Completion | cortexstream.Chunk) -> dict:
    """Ollama's `message`: the text, and the calls (arguments as objects) when there are some."""
    message: dict = {"role": "assistant", "content": result.text}
    if result.tool_calls:
        message["tool_calls"] = ollama_tool_calls(result.tool_calls)
    return message


async def _embed(state: ServerState, model: str, keep_alive, texts: list[str],
                 input_field: str) -> tuple[list[list[float]], int, int]:
    """Embeds with the model `model` names, off the event loop (the embedding model blocks);
    returns the vectors, their token count and the nanoseconds spent waiting for the model. An
    error about the engine's `input` names `input_field`."""
    started = time.perf_counter_ns()
    try:
        async with state.leased(model, embedding=True, keep_alive=keep_alive) as held:
            load_ns = time.perf_counter_ns() - started
            vectors, prompt_tokens = await held.embed_with_usage(texts)
    except cortexstream.CortexstreamError as error:
        raise _in_ollama_terms(error, {"input": input_field}) from error
    return vectors, prompt_tokens, load_ns


@router.post("/embed")
async def embed(body: OllamaEmbedRequest, state: ReadyState):
    started = time.perf_counter_ns()
    vectors, prompt_tokens, load_ns = await _embed(state, body.model, body.keep_alive, embedding_texts(body.input),
                                                   "input")
    total_ns = time.perf_counter_ns() - started
    return {"model": body.model, "embeddings": vectors, "total_duration": total_ns, "load_duration": load_ns,
            "prompt_eval_count": prompt_tokens}


@router.post("/embeddings")
async def embeddings(body: OllamaEmbeddingsRequest, state: ReadyState):
    [vector], _, _ = await _embed(state, body.model, body.keep_alive, [body.prompt], "prompt")
    return {"embedding": vector}


def _parameter_size(count: int | None) -> str:
    """Ollama's spelling of a parameter count: `134.52M`, `1.2B`."""
    if not count:
        return ""
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"


def _details(model: ServedModel) -> dict:
    file_format = "gguf" if model.path.suffix == ".gguf" else "safetensors"
    return {"parent_model": "", "format": file_format, "family": model.architecture,
            "families": [model.architecture], "parameter_size": _parameter_size(model.parameter_count),
            "quantization_level": model.quantization or ""}


def _listing(model: ServedModel) -> dict:
    # A store name may carry its own tag (`chat:v1`); the others get Ollama's default one.
    name = model.id if ":" in model.id else model.id + OLLAMA_DEFAULT_TAG
    return {"name": name, "model": name, "size": model.size_bytes, "details": _details(model)}


@router.get("/tags")
async def tags(state: ReadyState):
    return {"models": [{**_listing(m), "modified_at": _timestamp(m.modified_at)} for m in state.catalog.models]}


#: Ollama's `expires_at` for a model kept loaded forever: now plus Go's longest duration.
_FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)


def _expires_at(unix_seconds: float | None) -> str:
    if unix_seconds is None:
        return _timestamp(datetime.now(UTC) + _FOREVER)
    return _timestamp(datetime.fromtimestamp(unix_seconds, tz=UTC))


@router.get("/ps")
async def running_models(state: ReadyState):
    """The loaded models: `size` is the memory each holds (weights and KV cache), all of it in
    RAM (`size_vram: 0`); `expires_at` is when it unloads if no request comes."""
    loaded = await asyncio.to_thread(state.registry.loaded)
    listed = []
    for running in loaded:
        model = state.catalog.by_id(running.name)
        if model is None:
            continue  # removed while this listed it
        listed.append({**_listing(model), "size": running.memory_bytes, "size_vram": 0,
                       "expires_at": _expires_at(running.expires_at), "context_length": model.context_length})
    return {"models": listed}


@router.post("/show")
async def show(body: OllamaShowRequest, state: ReadyState):
    model = await state.described(body.model_name)
    model_info = {"general.architecture": model.architecture}
    if model.parameter_count:
        model_info["general.parameter_count"] = model.parameter_count
    parameters = ""
    if model.context_length is not None:
        model_info[f"{model.architecture}.context_length"] = model.context_length
        # Ollama's `parameters` are the Modelfile's PARAMETER lines; the served context is ours.
        parameters = f"num_ctx {model.context_length}"
    return {
        "modelfile": "",
        "parameters": parameters,
        "template": model.chat_template or "",
        "details": _details(model),
        "model_info": model_info,
        "capabilities": ["embedding"] if model.is_embedding else ["completion"],
        "modified_at": _timestamp(model.modified_at),
    }


@router.get("/version")
async def version():
    return {"version": getattr(cortexstream, "__version__", "0.0.0")}
