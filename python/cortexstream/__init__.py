"""cortexstream: fast LLM inference on CPU with continuous batching and streaming.

>>> import cortexstream
>>> with cortexstream.Engine() as engine:           # default model from the cache
...     print(engine.generate("The capital of France is", max_tokens=8).text)

Models come from the local cache; ``python -m cortexstream pull`` fetches the defaults.
"""

from . import logs, models
from ._async import AsyncStream
from ._core import (
    Chunk,
    Completion,
    Lease,
    LoadedModel,
    ModelInfo,
    StopReason,
    Stream,
    Timings,
    TokenLogprobs,
    ToolCall,
    Usage,
    __version__,
    kernel_info,
)
from ._engine import Engine
from ._registry import Registry
from .errors import (
    CancelledError,
    ChatTemplateError,
    ChatTemplateMissingError,
    ContextLengthExceededError,
    CortexstreamError,
    EngineClosedError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    NoEmbeddingModelError,
    OverloadedError,
)

__all__ = [
    "AsyncStream",
    "CancelledError",
    "ChatTemplateError",
    "ChatTemplateMissingError",
    "Chunk",
    "Completion",
    "ContextLengthExceededError",
    "CortexstreamError",
    "Engine",
    "EngineClosedError",
    "InvalidRequestError",
    "Lease",
    "LoadedModel",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFoundError",
    "NoEmbeddingModelError",
    "OverloadedError",
    "Registry",
    "StopReason",
    "Stream",
    "Timings",
    "TokenLogprobs",
    "ToolCall",
    "Usage",
    "__version__",
    "kernel_info",
    "logs",
    "models",
]

logs.forward_logs()
