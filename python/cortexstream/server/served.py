"""The list of models a server serves, as small values: the command line builds it (`--model`,
`--embedding-model`), and a config file can build the same list.

Nothing here loads anything: `ServerState` registers the entries in a `cortexstream.Registry`,
which loads each model on first use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortexstream import models

#: `--embedding-model none` serves no embedding model.
NO_EMBEDDING_MODEL = "none"

#: What `--model` serves when it is not given.
DEFAULT_MODEL = models.DEFAULT_MODEL

#: `name=source` in `--model`: a name has no path separator (so `dir/a=b.gguf` stays a path).
_NAMED_SOURCE = re.compile(r"^(?P<name>[^=/\\\s]+)=(?P<source>.+)$")


@dataclass(frozen=True)
class EngineOptions:
    """Engine sizes and limits; None keeps the core's default (see `cortexstream.Engine`)."""

    max_running: int | None = None
    max_queue: int | None = None
    kv_cache_tokens: int | None = None
    max_batch_tokens: int | None = None
    target_step_ms: float | None = None
    """Step time the token budget adapts to; 0 keeps it fixed (`--target-step-ms`)."""
    context_length: int | None = None
    threads: int | None = None
    chat_template: str | None = None
    """Jinja chat template text used instead of the model's own (`--chat-template FILE`)."""
    log_prompts: bool | None = None
    """Put prompts in the engine's `queued` log records (`--log-prompts`); never by default."""
    kv_cache_type: str | None = None
    """How the KV cache stores keys and values: f16 or q8_0 (`--kv-cache-type`)."""
    block_size: int | None = None
    """Tokens per KV cache block (a config file's `block_size`)."""
    max_prefill_tokens: int | None = None
    """Most prompt tokens one step computes (a config file's `max_prefill_tokens`)."""

    def as_kwargs(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if value is not None}


@dataclass(frozen=True)
class ModelEntry:
    """One served model.

    `name` is what requests put in `model` (Ollama's `name:latest` answers too); `source` is a
    name from the model cache (`smollm2`, `minilm`) or a path (a GGUF file, or for an embedding
    model a sentence-transformers folder). `keep_alive` is the model's own idle time before it
    unloads (Ollama's: seconds, `"5m"`, `0` at once, negative never; None: the server's
    `--keep-alive`). `engine` holds the engine settings (ignored for an embedding model except
    `threads`). `defaults` are request options (the core's names) a request's own values
    override (a config file's `[models.defaults]`)."""

    name: str
    source: str
    embedding: bool = False
    keep_alive: float | str | None = None
    engine: EngineOptions = EngineOptions()
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def path(self) -> Path:
        """The file or folder to load (raises FileNotFoundError naming what to pull)."""
        return models.resolve(self.source)

    def register_kwargs(self) -> dict:
        """Keyword arguments of `cortexstream.Registry.register` (after the name and path)."""
        kwargs: dict = {"embedding": self.embedding}
        if self.keep_alive is not None:
            kwargs["keep_alive"] = self.keep_alive
        settings = self.engine.as_kwargs()
        if self.embedding:
            # An embedding model has no engine: only its thread count applies.
            settings = {k: v for k, v in settings.items() if k == "threads"}
        return {**kwargs, **settings}


def default_name(source: str) -> str:
    """The name a model answers to when `--model` gives none: a cache name as it is, a path's
    file (or folder) name without its extension."""
    if source in models.KNOWN_MODELS:
        return source
    path = Path(source)
    return path.stem if path.suffix == ".gguf" else path.name or source


def parse_model_option(text: str, *, embedding: bool = False, engine: EngineOptions = EngineOptions()) -> ModelEntry:
    """One `--model` value: `SOURCE` (a cache name or a path, named after it) or `NAME=SOURCE`."""
    text = text.strip()
    named = _NAMED_SOURCE.match(text)
    if named and not Path(text).exists():
        name, source = named["name"], named["source"]
    else:
        name, source = default_name(text), text
    if not name or not source:
        raise ValueError(f"expected NAME=SOURCE or SOURCE (a cache name or a path), got {text!r}")
    return ModelEntry(name=name, source=source, embedding=embedding or is_embedding_source(source), engine=engine)


def is_embedding_source(source: str) -> bool:
    """A sentence-transformers folder (an embedding model) rather than a GGUF file: the cache's
    folder models (`minilm`) and any directory."""
    known = models.KNOWN_MODELS.get(source)
    if known is not None:
        return not known.entry
    return Path(source).expanduser().is_dir()


def command_line_models(model_options: list[str] | None, embedding_model: str | None,
                        engine: EngineOptions) -> tuple[ModelEntry, ...]:
    """The served models of `--model` (repeatable; default smollm2) and `--embedding-model`
    (default minilm when it is in the cache; `none` for none), every one with `engine`."""
    entries = [parse_model_option(option, engine=engine) for option in (model_options or [DEFAULT_MODEL])]
    if embedding_model is None:
        default = models.KNOWN_MODELS[models.DEFAULT_EMBEDDING_MODEL]
        if default.is_present():
            entries.append(ModelEntry(default.name, default.name, embedding=True, engine=engine))
    elif embedding_model != NO_EMBEDDING_MODEL:
        entries.append(parse_model_option(embedding_model, embedding=True, engine=engine))
    return tuple(_unique_names(entries))


def _unique_names(entries: list[ModelEntry]) -> list[ModelEntry]:
    """Two entries may not share a name (the command line says which)."""
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ValueError(f"two models are named {entry.name!r}; name one of them with NAME=SOURCE")
        seen.add(entry.name)
    return entries



#: A Go duration of zero: "0s", "0m0s", "0.0h"...
_ZERO_DURATION = re.compile(r"^\+?(0+(\.0*)?(h|m|s|ms|us|µs|ns))+$")


def is_zero_keep_alive(keep_alive: object) -> bool:
    """Whether an Ollama `keep_alive` is zero (unload now). Anything else, valid or not, is
    for the core to read (it names `keep_alive` when it cannot)."""
    if isinstance(keep_alive, bool):
        return False
    if isinstance(keep_alive, (int, float)):
        return keep_alive == 0
    if isinstance(keep_alive, str):
        text = keep_alive.strip()
        try:
            return float(text) == 0
        except ValueError:
            return bool(_ZERO_DURATION.match(text))
    return False
