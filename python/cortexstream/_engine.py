"""The user-facing :class:`Engine`: model names from the cache, asyncio and numpy on top of
the compiled engine (every synchronous method is the compiled one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

from . import _core, models
from ._async import AsyncStream
from ._core import Completion
from .errors import ModelNotFoundError

if TYPE_CHECKING:
    import numpy
    from typing_extensions import Unpack

    from ._core import EngineSettings, Sampling

PathLike = Union[str, "os.PathLike[str]"]
Prompt = Union[str, List[int]]
Messages = Sequence[Dict[str, str]]


class Engine(_core.Engine):
    """A loaded model serving requests from any thread, with or without asyncio.

    ``model`` is a model name from the cache (default ``"smollm2"``) or a path to a GGUF
    file. ``embedding_model`` is a name or a sentence-transformers folder; ``None`` loads
    ``"minilm"`` when it is in the cache, ``False`` loads none. The other arguments tune the
    scheduler; ``None`` keeps the core's default (``max_running=32``, ``max_batch_tokens=2048``,
    ``target_step_ms=25``, ``kv_cache_tokens=16384``, ``context_length`` = the model's,
    ``threads`` = physical cores, ``max_queue=256``). Every step runs every running stream's
    next token plus a chunk of any prompt being prefilled; ``max_batch_tokens`` is the step's
    token budget (at most 2**20), all of it a lone prompt's when no stream is decoding (a
    request arriving meanwhile waits for that one step). ``target_step_ms`` is the step time,
    hence inter-token latency of running streams while a prompt is prefilled beside them, that
    the budget adapts to: such a step costs the larger of it and twice the decodes' own step,
    so their latency at most doubles or stays within the target (above 0, at most 10000;
    ``0`` keeps a fixed budget of ``max_batch_tokens``). ``threads`` may be at most 4 per available CPU, and the KV cache must
    fit in the machine's memory; a setting out of range raises :class:`InvalidRequestError`
    with ``param`` naming it.
    ``chat_template`` is a Jinja chat template used instead of the model's
    own; a model without one (a base model such as ``"gemma3"``) needs it for chat requests,
    which otherwise raise :class:`ChatTemplateMissingError`.
    ``log_prompts=True`` puts each request's prompt in its ``queued`` log record (see
    :mod:`cortexstream.logs`); by default prompts are never logged. ``tokenizer``,
    ``max_prefill_tokens`` (most prompt tokens one step computes, default 2048) and
    ``block_size`` (tokens per KV block, default 16) complete the settings, typed as
    ``cortexstream._core.EngineSettings``: the core's one list, which it reads (an unknown name
    or a wrong type raises :class:`InvalidRequestError` naming it, ``None`` keeps the default).

    Sampling keyword arguments, accepted by every generation method: ``max_tokens``,
    ``temperature`` (0.8; 0 is greedy), ``top_k`` (40), ``top_p`` (0.95), ``min_p`` (0.05),
    ``repetition_penalty`` (1.0), ``presence_penalty``, ``frequency_penalty`` (0.0),
    ``penalty_last_n`` (64), ``seed``, ``stop`` (str or list), ``stop_token_ids``,
    ``ignore_eos`` (False), ``logprobs`` (number of alternatives, 0..20), ``priority`` (0),
    ``logit_bias`` (OpenAI's ``{token_id: bias}``, ids as int or str, biases in [-100, 100]),
    ``tag`` (a str carried by the request's log records, e.g. a request id).
    At most one output constraint: ``json_schema`` (a dict, a JSON str or a Pydantic model
    class), ``regex``, ``grammar`` (Lark), ``choices`` (list of str) or ``response_format``
    (OpenAI's dict, or a Pydantic model class); the output then follows it and ends with
    ``"stop"`` when complete, ``"length"`` if ``max_tokens`` runs out first. A constraint that
    does not compile raises :class:`InvalidRequestError` naming the argument.
    ``None`` for any of them means its default. The core reads them: an unknown name, a wrong
    type or a value out of range raises :class:`InvalidRequestError` with ``param`` set (typed
    as ``cortexstream._core.Sampling``, a ``TypedDict``). A prompt or messages of the wrong
    type raise ``TypeError``.

    Use it as a context manager, or call :meth:`close`, to free the model deterministically.
    """

    def __new__(
        cls,
        model: Optional[PathLike] = None,
        *,
        embedding_model: Union[PathLike, None, bool] = None,
        **settings: Unpack[EngineSettings],
    ) -> Engine:
        return super().__new__(
            cls,
            _resolve(models.DEFAULT_MODEL if model is None else model),
            embedding_model=_embedding_model_path(embedding_model),
            **settings,
        )

    def embed(self, texts: Union[str, Sequence[str]], *, as_numpy: bool = False) -> Any:
        """Unit-length embedding vectors, one per text: a list of lists, or with
        ``as_numpy=True`` a float32 array of shape ``(len(texts), dim)`` (needs numpy)."""
        vectors = super().embed(texts)
        return _as_array(vectors, self.model_info.embedding_dim) if as_numpy else vectors

    def astream(self, prompt: Prompt, **sampling: Unpack[Sampling]) -> AsyncStream:
        """Submits a text or token-id prompt now; iterate the result with ``async for``."""
        return AsyncStream(self.stream(prompt, **sampling))

    def astream_chat(self, messages: Messages, **sampling: Unpack[Sampling]) -> AsyncStream:
        """Submits chat messages now; iterate the reply with ``async for``."""
        return AsyncStream(self.stream_chat(messages, **sampling))

    async def agenerate(self, prompt: Prompt, **sampling: Unpack[Sampling]) -> Completion:
        """Like :meth:`generate` without blocking the event loop; cancelling the task
        cancels the request."""
        return await self.astream(prompt, **sampling).wait()

    async def achat(self, messages: Messages, **sampling: Unpack[Sampling]) -> Completion:
        """Like :meth:`chat` without blocking the event loop; cancelling the task cancels
        the request."""
        return await self.astream_chat(messages, **sampling).wait()


def _resolve(name_or_path: PathLike) -> Path:
    try:
        return models.resolve(name_or_path)
    except FileNotFoundError as missing:
        raise ModelNotFoundError(str(missing)) from None


def _embedding_model_path(choice: Union[PathLike, None, bool]) -> Optional[Path]:
    if choice is False:
        return None
    if choice is None or choice is True:
        default = models.KNOWN_MODELS[models.DEFAULT_EMBEDDING_MODEL]
        if choice is None and not default.is_present():
            return None
        return _resolve(default.name)
    return _resolve(choice)


def _as_array(vectors: List[List[float]], dim: Optional[int]) -> numpy.ndarray:
    import numpy  # optional dependency: only needed for as_numpy=True

    return numpy.asarray(vectors, dtype=numpy.float32).reshape(len(vectors), dim or 0)
