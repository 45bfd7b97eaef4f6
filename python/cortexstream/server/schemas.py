"""Request bodies of the OpenAI and Ollama endpoints.

Only the fields the server acts on are declared; unknown fields are ignored, as both APIs grow
new ones all the time. Sampling fields are not declared at all: `options.py` renames them to the
engine's options, and the engine checks their types and ranges and names the field at fault.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from .errors import ApiError

#: Most texts one embeddings request may hold (OpenAI's own limit). The engine embeds them in one
#: call that cannot be cancelled, so a client that leaves cannot stop it: keep it bounded.
MAX_EMBEDDING_INPUTS = 2048


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


# Token ids of a prompt and `top_logprobs`: unsigned 32-bit integers, so a negative or 65-bit
# number is a 400 here, not a failed conversion.
Count = Annotated[int, Field(ge=0, le=2**32 - 1)]
# An extension of both APIs (vLLM's `priority`): the engine's scheduling priority, a signed
# 32-bit integer; higher runs first, equal ones in arrival order. Strict: no bools or "5".
Priority = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]


# --- OpenAI -------------------------------------------------------------------------------------


class ContentPart(_Body):
    type: str
    text: str | None = None


class OpenAIMessage(_Body):
    role: str
    # Required, as OpenAI requires it; null is allowed (an assistant turn that only called tools).
    content: str | list[ContentPart] | None
    # An assistant turn's calls, and a `tool` turn's answer to one (see structured.py).
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class OpenAISampling(_Body):
    """Fields shared by chat completions and completions. The sampling fields are not declared:
    they are read from the body's extra fields by `options.OPENAI_OPTIONS` and checked by the
    engine, which names the field at fault."""

    model_config = ConfigDict(extra="allow")

    model: str
    # Checked by the route against the engine's running slots (`--max-running`).
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    priority: Priority = 0
    # Structured output and tools (see structured.py): never silently ignored.
    response_format: dict | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    functions: list | None = None
    function_call: str | dict | None = None

    @property
    def sampling_fields(self) -> dict:
        """The body's undeclared fields, where the sampling fields are."""
        return self.model_extra or {}

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(OpenAISampling):
    messages: list[OpenAIMessage]
    logprobs: bool = False
    top_logprobs: Count | None = None


class CompletionRequest(OpenAISampling):
    # A string, a list of strings (one choice set each), token ids, or a list of token-id lists.
    prompt: str | list[str] | list[Count] | list[list[Count]]
    logprobs: Count | None = None


def embedding_texts(value: str | list[str]) -> list[str]:
    """The `input` of an embeddings request (OpenAI's or Ollama's) as a list of at most
    `MAX_EMBEDDING_INPUTS` texts; the engine rejects an empty list or text, naming `input`."""
    texts = [value] if isinstance(value, str) else value
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise ApiError(400, f"input holds {len(texts)} texts; at most {MAX_EMBEDDING_INPUTS} per request",
                       param="input", code="invalid_request")
    return texts


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


# --- Ollama -------------------------------------------------------------------------------------


#: Ollama's `keep_alive`: seconds (negative: forever; 0: unload after this request) or a duration
#: such as "5m"; the core parses it and names `keep_alive` when it cannot.
KeepAlive = StrictInt | StrictFloat | StrictStr | None


class OllamaMessage(_Body):
    role: str
    content: str = ""
    # An assistant turn's calls (`{"function": {"name", "arguments": {...}}}`) and the name
    # of the tool a `tool` turn answers (see structured.py).
    tool_calls: list[dict] | None = None
    tool_name: str | None = None


class OllamaGenerateRequest(_Body):
    model: str
    keep_alive: KeepAlive = None
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    stream: bool = True
    # Sampling options, renamed by `options.OLLAMA_OPTIONS` and checked by the engine.
    options: dict = Field(default_factory=dict)
    # "json" or a JSON schema (see structured.py).
    format: str | dict | None = None
    priority: Priority = 0


class OllamaChatRequest(_Body):
    model: str
    keep_alive: KeepAlive = None
    messages: list[OllamaMessage] = Field(default_factory=list)
    stream: bool = True
    # Sampling options, renamed by `options.OLLAMA_OPTIONS` and checked by the engine.
    options: dict = Field(default_factory=dict)
    format: str | dict | None = None
    priority: Priority = 0
    # OpenAI's tool shape, as Ollama takes it (see structured.py).
    tools: list | None = None
    # Not Ollama's: OpenAI's `tool_choice`, accepted here too so a call can be forced.
    tool_choice: str | dict | None = None


class OllamaEmbedRequest(_Body):
    model: str
    keep_alive: KeepAlive = None
    input: str | list[str]


class OllamaEmbeddingsRequest(_Body):
    """The legacy single-text endpoint."""

    model: str
    keep_alive: KeepAlive = None
    prompt: str


class OllamaShowRequest(_Body):
    # Older clients send `name`, newer ones `model`.
    model: str | None = None
    name: str | None = None

    @property
    def model_name(self) -> str:
        return self.model or self.name or ""

