"""Typed stubs of the compiled module ``cortexstream._core`` (checked by ``mypy.stubtest``)."""

import builtins
import os
from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union, final

from typing_extensions import Literal, Self, TypedDict, Unpack, disjoint_base

__all__ = [
    "Chunk",
    "Completion",
    "Engine",
    "Lease",
    "LoadedModel",
    "ModelDescription",
    "ModelInfo",
    "Registry",
    "StopReason",
    "Stream",
    "Timings",
    "TokenLogprobs",
    "ToolCall",
    "Usage",
    "__version__",
    "check_engine_settings",
    "check_keep_alive",
    "check_options",
    "dropped_log_records",
    "engine_setting_names",
    "kernel_info",
    "option_names",
    "set_log_handler",
]

__version__: str

def set_log_handler(level: int, handler: Optional[Callable[[int, str, str, str], object]]) -> None:
    """Forwards the core's log records at ``level`` (1 error .. 5 trace) and more severe to
    ``handler(level, target, message, fields_json)``, called on a log thread; ``None`` stops."""

def dropped_log_records() -> int:
    """Records dropped because the handler fell a full queue behind."""

def kernel_info() -> dict[str, Any]:
    """The compute kernels the engine picks on this CPU: ``matmul`` (one row), ``matmul_batched``
    (32 rows), ``matmul_batched_512`` (the 512-bit VNNI pair path), ``attention`` and
    ``attention_slice`` (positions per slice of long-context decode attention)."""

def option_names() -> List[str]:
    """Every option name a request takes (the keys of :class:`Sampling`)."""

def check_options(options: Dict[str, Any]) -> None:
    """Checks request options ahead of any request and model (names, types, ranges; token ids
    are checked at submit); raises ``InvalidRequestError`` naming the field."""

def engine_setting_names() -> List[str]:
    """Every engine setting's name (the keywords of :class:`Engine`), from the core's one definition."""

def check_engine_settings(settings: Dict[str, Any]) -> None:
    """Checks engine settings ahead of any model (names, types, ranges, as :class:`Engine` checks
    them but for the KV cache against the model); raises ``InvalidRequestError`` naming the setting."""

def check_keep_alive(value: Union[float, str]) -> None:
    """Checks a ``keep_alive`` value as :class:`Registry` reads it; raises ``InvalidRequestError``."""

@final
class Usage:
    """Token counts of one request."""

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    @property
    def cached_prompt_tokens(self) -> int:
        """Prompt tokens whose KV came from the prefix cache instead of a prefill."""

@final
class Timings:
    """Nanosecond timings of one request."""

    @property
    def queued_ns(self) -> int:
        """Submit until first scheduled."""
    @property
    def time_to_first_token_ns(self) -> int:
        """Submit until the first token was sampled."""
    @property
    def prefill_ns(self) -> int:
        """Prompt processing time."""
    @property
    def decode_ns(self) -> int:
        """First token until the end."""
    @property
    def per_token_ns(self) -> int:
        """Mean time per generated token after the first."""
    @property
    def total_ns(self) -> int:
        """Submit until the end."""

@final
class StopReason:
    """Which stop ended a request: the detail behind ``finish_reason``."""

    @property
    def kind(self) -> str:
        """``"eos"`` (the model's end-of-generation token), ``"stop_token"`` (one of
        ``stop_token_ids``), ``"stop_string"`` (one of ``stop``), ``"grammar"`` (the output
        constraint is complete): all with ``finish_reason`` ``"stop"``; or ``"length"``,
        ``"cancelled"``, ``"error"`` as ``finish_reason``."""
    @property
    def token_id(self) -> Optional[int]:
        """The token that ended the request, for ``"eos"`` and ``"stop_token"``."""
    @property
    def stop_string(self) -> Optional[str]:
        """The stop string that matched, for ``"stop_string"``."""

@final
class TokenLogprobs:
    """Log-probability of one sampled token and its top alternatives."""

    @property
    def token_id(self) -> int: ...
    @property
    def logprob(self) -> float: ...
    @property
    def top(self) -> List[Tuple[int, float]]:
        """``(token_id, logprob)`` of the most likely tokens, best first."""
    @property
    def bytes(self) -> builtins.bytes:
        """The sampled token's raw bytes (not always valid UTF-8 alone: a byte-level token
        may be part of a multi-byte character)."""
    @property
    def top_bytes(self) -> List[builtins.bytes]:
        """The raw bytes of each alternative in ``top``, in the same order."""

@final
class ToolCall:
    """A call the model made to one of the request's ``tools``."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def arguments(self) -> str:
        """The arguments as JSON text (an object), as OpenAI returns them."""

@final
class Chunk:
    """One item of a stream: new text, or (last) the finish reason with usage and timings."""

    @property
    def text(self) -> str:
        """Newly completed text; may be empty while a possible stop string is held back."""
    @property
    def token_id(self) -> Optional[int]:
        """The sampled token (``None`` on the last chunk)."""
    @property
    def logprobs(self) -> Optional[TokenLogprobs]: ...
    @property
    def finish_reason(self) -> Optional[str]:
        """``"stop"``, ``"length"``, ``"cancelled"`` or ``"error"`` on the last chunk only
        (``"tool_calls"`` for a request with ``tools`` that stopped after calling)."""
    @property
    def stop_reason(self) -> Optional[StopReason]:
        """Which stop ended the request, on the last chunk only."""
    @property
    def usage(self) -> Optional[Usage]: ...
    @property
    def timings(self) -> Optional[Timings]: ...
    @property
    def error(self) -> Optional[str]:
        """What went wrong, when ``finish_reason`` is ``"error"``."""
    @property
    def tool_calls(self) -> List[ToolCall]:
        """Calls completed by this chunk (requests with ``tools`` only; their text is then
        held back until it is known not to be a call)."""

@final
class Completion:
    """The whole result of one request."""

    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> List[int]: ...
    @property
    def finish_reason(self) -> str:
        """``"stop"``, ``"length"``, ``"cancelled"`` or ``"error"`` (``"tool_calls"`` for a
        request with ``tools`` that stopped after calling)."""
    @property
    def stop_reason(self) -> StopReason:
        """Which stop ended the request."""
    @property
    def usage(self) -> Usage: ...
    @property
    def timings(self) -> Timings: ...
    @property
    def logprobs(self) -> Optional[List[TokenLogprobs]]:
        """One entry per generated token, when the request asked for ``logprobs``."""
    @property
    def error(self) -> Optional[str]:
        """What went wrong, when ``finish_reason`` is ``"error"``."""
    @property
    def tool_calls(self) -> List[ToolCall]:
        """The calls the answer made (requests with ``tools`` only; ``text`` is then the
        answer without them and ``finish_reason`` is ``"tool_calls"``)."""

@final
class ModelInfo:
    """What an engine has loaded."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def context_length(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def embedding_model(self) -> Optional[str]:
        """Name of the embedding model, if one is loaded."""
    @property
    def embedding_dim(self) -> Optional[int]: ...
    @property
    def chat_template(self) -> Optional[str]:
        """Source of the chat template in use (the configured one, else the model's); ``None``: none."""
    @property
    def parameter_count(self) -> int:
        """Parameters: the elements of every tensor in the model file."""
    @property
    def quantization(self) -> Optional[str]:
        """The file's quantization by llama.cpp's name (``"Q4_K_M"``), if the file says."""

@final
class Stream:
    """An iterator over one request's chunks; also a context manager.

    Breaking out of the loop, :meth:`close`, garbage collection or Ctrl-C cancels the
    request in the engine.
    """

    @property
    def request_id(self) -> int:
        """The engine's id of this request."""
    @property
    def prompt_tokens(self) -> int:
        """Number of prompt tokens."""
    @property
    def completion(self) -> Optional[Completion]:
        """The whole result, once the last chunk has been read."""
    @property
    def finished(self) -> bool:
        """Whether the last chunk has been read or the stream was closed."""
    def next_chunk(self, timeout: Optional[float] = None) -> Optional[Chunk]:
        """The next chunk, waiting at most ``timeout`` seconds (``None`` or ``inf``: until one
        arrives; NaN or a negative number raises ``InvalidRequestError`` naming ``timeout``).

        Returns ``None`` when the stream has ended or nothing arrived in time; ``finished``
        tells which.
        """
    def wait(self) -> Completion:
        """Reads the remaining chunks and returns the completion."""
    def cancel(self) -> None:
        """Asks the engine to stop; the stream then ends with finish_reason ``"cancelled"``."""
    def close(self) -> None:
        """Cancels the request (if still running) and ends the stream now."""
    def __iter__(self) -> Stream: ...
    def __next__(self) -> Chunk: ...
    def __enter__(self) -> Stream: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None: ...

class _JsonSchemaFormat(TypedDict, total=False):
    name: str
    schema: Dict[str, Any]
    strict: bool

class _ResponseFormat(TypedDict, total=False):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchemaFormat

class Sampling(TypedDict, total=False):
    """The ``**sampling`` keyword arguments of the generation methods: the core's request
    options (``cortexstream::RequestOptions``), which the core reads and checks. ``None`` keeps
    a field's default; a wrong type, an unknown name or a value out of range raises
    ``InvalidRequestError`` naming the field."""

    # What the sampler reads.
    temperature: Optional[float]
    top_k: Optional[int]
    top_p: Optional[float]
    min_p: Optional[float]
    repetition_penalty: Optional[float]
    presence_penalty: Optional[float]
    frequency_penalty: Optional[float]
    penalty_last_n: Optional[int]
    seed: Optional[int]
    logprobs: Optional[int]
    logit_bias: Optional[Mapping[Union[int, str], float]]
    # When to stop.
    max_tokens: Optional[int]
    stop: Optional[Union[str, Sequence[str]]]
    stop_token_ids: Optional[Sequence[int]]
    ignore_eos: Optional[bool]
    # Scheduling.
    priority: Optional[int]
    tag: Optional[str]
    # At most one output constraint. A Pydantic model class (``json_schema``,
    # ``response_format``) stands for its JSON schema.
    json_schema: Optional[Union[Dict[str, Any], str, type]]
    regex: Optional[str]
    grammar: Optional[str]
    choices: Optional[Sequence[str]]
    response_format: Optional[Union[_ResponseFormat, Dict[str, Any], type]]
    # Tools the model may call (chat methods only): OpenAI's list of
    # ``{"type": "function", "function": {...}}``, ``"none"``/``"auto"``/``"required"`` or
    # ``{"type": "function", "function": {"name": ...}}``, and more than one call per answer.
    tools: Optional[Sequence[Dict[str, Any]]]
    tool_choice: Optional[Union[str, Dict[str, Any]]]
    parallel_tool_calls: Optional[bool]

class EngineSettings(TypedDict, total=False):
    """The engine settings of ``Engine(...)`` and ``Registry.register(...)``: the core's
    ``EngineConfig`` fields (``EngineConfig::setting_names``), which the core reads and checks.
    ``None`` keeps a setting's default; a wrong type, an unknown name or a value out of range
    raises ``InvalidRequestError`` naming the setting."""

    tokenizer: Optional[Union[str, os.PathLike[str]]]
    embedding_model: Optional[Union[str, os.PathLike[str]]]
    max_running: Optional[int]
    max_batch_tokens: Optional[int]
    target_step_ms: Optional[float]
    max_prefill_tokens: Optional[int]
    kv_cache_tokens: Optional[int]
    block_size: Optional[int]
    context_length: Optional[int]
    threads: Optional[int]
    max_queue: Optional[int]
    chat_template: Optional[str]
    log_prompts: Optional[bool]
    kv_cache_type: Optional[Literal["f16", "q8_0"]]

@disjoint_base
class Engine:
    """A loaded model serving requests from any thread (paths only; see ``cortexstream.Engine``).

    ``**sampling`` of the generation methods: see :class:`Sampling` (the tool options are for
    the chat methods; messages may carry ``tool_calls``, ``tool_call_id`` and ``name``). ``max_queue``
    bounds the requests waiting for a slot; past it submits raise ``OverloadedError``.
    ``threads`` is at most 4 per available CPU. ``max_batch_tokens`` is a step's token budget
    (decodes and prompt chunks; all of it a lone prompt's, or a burst's that arrived together)
    and ``target_step_ms`` the step time it adapts to beside streams that were already streaming, at least twice their own step (default 25; 0 keeps
    the budget fixed). A setting out of range (a negative size, a KV cache larger than
    memory, a target above 10000 ms) raises ``InvalidRequestError`` naming it.
    """

    def __new__(
        cls,
        model: Union[str, os.PathLike[str]],
        *,
        _lease: Optional[Lease] = None,
        **settings: Unpack[EngineSettings],
    ) -> Self: ...
    def generate(self, prompt: Union[str, List[int]], **sampling: Unpack[Sampling]) -> Completion:
        """Generates a completion for a text or token-id prompt."""
    def chat(self, messages: Sequence[Dict[str, Any]], **sampling: Unpack[Sampling]) -> Completion:
        """Generates the assistant's reply to chat messages."""
    def stream(self, prompt: Union[str, List[int]], **sampling: Unpack[Sampling]) -> Stream:
        """Submits a text or token-id prompt and returns its chunks as they are generated."""
    def stream_chat(self, messages: Sequence[Dict[str, Any]], **sampling: Unpack[Sampling]) -> Stream:
        """Submits chat messages and returns the reply's chunks as they are generated."""
    def embed(self, texts: Union[str, Sequence[str]]) -> List[List[float]]:
        """Unit-length embedding vectors, one per text."""
    def embed_with_usage(self, texts: Union[str, Sequence[str]]) -> Tuple[List[List[float]], int]:
        """Embedding vectors and the number of tokens they consumed."""
    def tokenize(self, text: str, add_special_tokens: bool = False) -> List[int]:
        """Token ids of ``text``."""
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids."""
    def apply_chat_template(self, messages: Sequence[Dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Renders chat messages with the model's chat template."""
    def metrics(self) -> Dict[str, Any]:
        """Counters and histograms (``{"buckets": [(le, count), ...], "sum", "count"}``)."""
    @property
    def model_info(self) -> ModelInfo:
        """What the engine has loaded."""
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
    def close(self) -> None:
        """Cancels in-flight requests, stops the engine thread and frees the model."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None: ...

#: Ollama's keep-alive: seconds (negative: forever, 0: unload when idle) or a duration like ``"5m"``.
_KeepAlive = Union[float, str, None]

@final
class ModelDescription:
    """What a generation model is, as :meth:`Registry.describe` reads it."""

    @property
    def architecture(self) -> str: ...
    @property
    def context_length(self) -> int:
        """The context window an engine with the model's settings serves."""
    @property
    def chat_template(self) -> Optional[str]: ...
    @property
    def parameter_count(self) -> int: ...
    @property
    def quantization(self) -> Optional[str]: ...

@final
class LoadedModel:
    """A model a :class:`Registry` has loaded."""

    @property
    def name(self) -> str: ...
    @property
    def is_embedding(self) -> bool: ...
    @property
    def memory_bytes(self) -> int:
        """Weight files plus KV cache."""
    @property
    def active_requests(self) -> int:
        """Leases held on it now."""
    @property
    def expires_at(self) -> Optional[float]:
        """Unix time it unloads if unused; ``None``: never."""

@final
class Lease:
    """A hold on a registry model: it stays loaded, and its requests run, until :meth:`release`."""

    @property
    def name(self) -> str: ...
    @property
    def is_embedding(self) -> bool: ...
    @property
    def engine(self) -> Optional[Any]:
        """The generation engine as a ``cortexstream.Engine`` (with its asyncio methods),
        ``None`` for an embedding model; its ``close()`` leaves the model to the registry."""
    def embed(self, texts: Union[str, Sequence[str]]) -> List[List[float]]:
        """Unit-length embedding vectors, one per text."""
    def embed_with_usage(self, texts: Union[str, Sequence[str]]) -> Tuple[List[List[float]], int]:
        """Embedding vectors and the number of tokens they consumed."""
    def release(self) -> None:
        """Ends the hold; the model's keep-alive countdown starts. Idempotent."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None: ...

@disjoint_base
class Registry:
    """Several models by name (paths only; see ``cortexstream.Registry``), each its own engine,
    loaded on first use, unloaded when idle past ``keep_alive`` or, least recently used
    first, to stay within ``memory_budget_bytes``. A model in use is never unloaded under a
    request: unloading only drops the registry's hold."""

    def __new__(cls, *, memory_budget_bytes: Optional[int] = None, keep_alive: _KeepAlive = None) -> Self: ...
    def register(
        self,
        name: str,
        model: Union[str, os.PathLike[str]],
        *,
        embedding: Optional[bool] = None,
        keep_alive: _KeepAlive = None,
        **settings: Unpack[EngineSettings],
    ) -> None:
        """Registers a GGUF generation model with engine settings, or with ``embedding=True`` a
        sentence-transformers folder (which takes only ``threads``), under ``name``; loads
        nothing yet. A bad setting raises ``InvalidRequestError`` naming it now."""
    def names(self) -> List[str]:
        """The registered names, sorted."""
    def get(self, name: str, keep_alive: _KeepAlive = None) -> Lease:
        """The model ``name``, loaded now if needed; hold the lease while using it."""
    def load(self, name: str, keep_alive: _KeepAlive = None) -> None:
        """Loads ``name`` if needed and starts its keep-alive countdown."""
    def unload(self, name: str) -> bool:
        """Unloads ``name`` now (leased requests finish first); whether it was loaded."""
    def unregister(self, name: str) -> bool:
        """Forgets ``name``, unloading it (leased requests finish first); whether it was registered."""
    def describe(self, name: str) -> Optional[ModelDescription]:
        """What the generation model ``name`` is, read from its GGUF's metadata without loading it
        (or from its engine when loaded); ``None`` for an embedding model. Not a use of it."""
    def loaded(self) -> List[LoadedModel]:
        """The loaded models, by name, after unloading the expired ones."""
    def metrics(self) -> Dict[str, Dict[str, Any]]:
        """The counters of every loaded model, by name: a generation model's ``Engine.metrics()``,
        an embedding model's ``embedding_requests`` and ``embedding_tokens_total``; reading them
        neither restarts a keep-alive nor counts as a use."""
    def close(self) -> None:
        """Unloads every model; later calls to :meth:`get` raise ``EngineClosedError``."""
    def shutdown(self) -> None:
        """:meth:`close`, then ends (as cancelled) the requests still running on its models."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None: ...
