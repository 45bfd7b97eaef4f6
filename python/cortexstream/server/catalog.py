"""The names the served models answer to, and what the model-list endpoints say about them.

A request's `model` is matched without case and without Ollama's `:latest` tag, against each
model's registered name and its aliases (the cache name or file name it was loaded from, and
the usual spellings of the cache's models: `all-minilm` for `minilm`). A registered name always
wins over another model's alias; an alias two models share belongs to the first.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ApiError, model_not_found
from .served import ModelEntry, default_name

#: Extra names of the models the cache ships, as users of OpenAI- and Ollama-style servers type them.
KNOWN_ALIASES = {
    "minilm": ("all-minilm-l6-v2", "all-minilm"),
}

#: Ollama appends a tag to every name; ours only ever have the default one.
OLLAMA_DEFAULT_TAG = ":latest"


def _normalize(name: str) -> str:
    name = name.strip().casefold()
    return name.removesuffix(OLLAMA_DEFAULT_TAG)


@dataclass
class ServedModel:
    """One registered model: its name (the registry's), its file, what it can do, and what its
    first load told (architecture, context length) for the listings."""

    id: str
    is_embedding: bool
    path: Path
    aliases: frozenset[str] = frozenset()
    architecture: str = ""
    context_length: int | None = None
    chat_template: str | None = None
    parameter_count: int | None = None
    quantization: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Request options (the core's names) a request's own values override: a config file's
    `[models.defaults]`. Every generation route takes them through `with_defaults`."""

    def with_defaults(self, sampling: Mapping[str, Any]) -> dict[str, Any]:
        """The engine options of a request for this model: its defaults, then the request's own
        (a request's explicit None, such as Ollama's `num_predict: -1`, keeps the engine's
        default). The one place defaults are merged, so no route can merge them differently."""
        return {**self.defaults, **sampling}

    @property
    def modified_at(self) -> datetime:
        """The model file's modification time, which Ollama lists."""
        return datetime.fromtimestamp(self.path.stat().st_mtime, tz=UTC)

    @property
    def size_bytes(self) -> int:
        if self.path.is_dir():
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return self.path.stat().st_size

    @property
    def described(self) -> bool:
        """Whether what a loaded engine tells is known (an embedding model has nothing more)."""
        return self.is_embedding or self.parameter_count is not None

    def learn(self, info) -> None:
        """Records a `ModelInfo` or a `ModelDescription` (an embedding model is BERT)."""
        self.architecture = info.architecture
        self.context_length = info.context_length
        self.chat_template = info.chat_template
        self.parameter_count = info.parameter_count
        self.quantization = info.quantization


def _aliases(entry: ModelEntry, path: Path) -> set[str]:
    names = {entry.source, default_name(entry.source), path.name, path.stem}
    for name in list(names):
        names.update(KNOWN_ALIASES.get(_normalize(name), ()))
    return {_normalize(n) for n in names if n} - {_normalize(entry.name)}


@dataclass
class ModelCatalog:
    """The registered models by name; safe to change while requests read it."""

    _models: dict[str, ServedModel] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: ModelEntry, path: Path) -> ServedModel:
        model = ServedModel(id=entry.name, is_embedding=entry.embedding, path=path,
                            aliases=frozenset(_aliases(entry, path)),
                            architecture="bert" if entry.embedding else "", defaults=dict(entry.defaults))
        with self._lock:
            self._models[entry.name] = model
        return model

    def remove(self, name: str) -> bool:
        with self._lock:
            return self._models.pop(name, None) is not None

    @property
    def models(self) -> list[ServedModel]:
        """In registration order (the first `--model` first)."""
        with self._lock:
            return list(self._models.values())

    def by_id(self, name: str) -> ServedModel | None:
        """The model registered as `name` exactly (no alias), if any."""
        with self._lock:
            return self._models.get(name)

    def find(self, name: str) -> ServedModel:
        """The model answering to `name`, or a 404 `model_not_found`."""
        model = self._lookup(name)
        if model is None:
            raise model_not_found(name)
        return model

    def knows(self, name: str) -> bool:
        """Whether some model answers to `name` (its id or an alias)."""
        return self._lookup(name) is not None

    def _lookup(self, name: str) -> ServedModel | None:
        wanted = _normalize(name)
        models = self.models
        for model in models:
            if _normalize(model.id) == wanted:
                return model
        for model in models:
            if wanted in model.aliases:
                return model
        return None

    def generation_model(self, name: str) -> ServedModel:
        model = self.find(name)
        if model.is_embedding:
            raise ApiError(400, f"The model '{name}' is an embedding model and cannot generate text", param="model")
        return model

    def embedding_model(self, name: str) -> ServedModel:
        model = self.find(name)
        if not model.is_embedding:
            raise ApiError(400, f"The model '{name}' does not produce embeddings", param="model")
        return model
