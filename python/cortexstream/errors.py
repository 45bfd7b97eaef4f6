"""Exceptions raised by cortexstream.

Every error of the Rust core has a stable ``code`` (the same string the REST server, the C
library and the Node addon report). The compiled module turns a core error into the class
registered for its code here, through :func:`_from_core`; codes without a class of their own
(``tokenizer_error``, ``internal_error``, ``io_error``) raise :class:`CortexstreamError`.
"""

from __future__ import annotations

from typing import Optional


class CortexstreamError(Exception):
    """Base class of every cortexstream error. ``code`` is the stable machine-readable code."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: Optional[str] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidRequestError(CortexstreamError, ValueError):
    """A request field is invalid; ``param`` names it as users spell it (``temperature``, ...)."""

    code = "invalid_request"

    def __init__(self, message: str, *, param: Optional[str] = None, code: Optional[str] = None) -> None:
        super().__init__(message, code=code)
        self.param = param


class ContextLengthExceededError(InvalidRequestError):
    """The prompt plus the requested completion does not fit in the model's context window."""

    code = "context_length_exceeded"

    def __init__(
        self,
        message: str,
        *,
        param: Optional[str] = None,
        prompt_tokens: Optional[int] = None,
        context_length: Optional[int] = None,
        code: Optional[str] = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class ChatTemplateError(InvalidRequestError):
    """The model's chat template could not render the messages."""

    code = "chat_template_error"


class ChatTemplateMissingError(ChatTemplateError):
    """A chat request to a model without a chat template (a base model), and none was given
    with the engine option ``chat_template``. Plain text prompts still work."""

    code = "chat_template_missing"


class ModelLoadError(CortexstreamError):
    """A model file is missing, unreadable or unsupported."""

    code = "model_load_error"


class ModelNotFoundError(ModelLoadError):
    """The named model is not in the model cache (the message says which command fetches it)."""

    code = "model_not_found"


class CancelledError(CortexstreamError):
    """The request was cancelled before it produced a result."""

    code = "cancelled"


class EngineClosedError(CortexstreamError):
    """The engine was closed; create a new one."""

    code = "engine_closed"


class OverloadedError(CortexstreamError):
    """The engine's request queue is full; retry later."""

    code = "overloaded"


class NoEmbeddingModelError(CortexstreamError):
    """``embed`` was called on an engine without an embedding model."""

    code = "no_embedding_model"


_CLASS_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidRequestError,
        ContextLengthExceededError,
        ChatTemplateError,
        ChatTemplateMissingError,
        ModelLoadError,
        ModelNotFoundError,
        CancelledError,
        EngineClosedError,
        OverloadedError,
        NoEmbeddingModelError,
    )
}


def _from_core(
    code: str,
    message: str,
    param: Optional[str],
    prompt_tokens: Optional[int],
    context_length: Optional[int],
) -> CortexstreamError:
    """Build the exception for a core error (called by the compiled module only)."""
    error = _CLASS_BY_CODE.get(code, CortexstreamError)(message, code=code)
    if isinstance(error, InvalidRequestError):
        error.param = param
    if isinstance(error, ContextLengthExceededError):
        error.prompt_tokens = prompt_tokens
        error.context_length = context_length
    return error
