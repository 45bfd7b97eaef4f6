"""The names the served models answer to, and their descriptions for the model-list endpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cortexstream

from .errors import ApiError, model_not_found

#: Extra names of the models the cache ships, as users of OpenAI- and Ollama-style servers type them.
KNOWN_ALIASES = {
    "minilm": ("all-minilm-l6-v2", "all-minilm"),
}

#: Ollama appends a tag to every name; ours only ever have the default one.
OLLAMA_DEFAULT_TAG = ":latest"


def _normalize(name: str) -> str:
    name = name.strip().casefold()
    return name.removesuffix(OLLAMA_DEFAULT_TAG)


def _is_path(name_or_path: str) -> bool:
    return os.sep in name_or_path or name_or_path.endswith(".gguf") or Path(name_or_path).exists()


@dataclass(frozen=True)
class ServedModel:
    """One loaded model: its primary id, every alias, and what it can do."""

    id: str
    aliases: frozenset[str]
    is_embedding: bool
    path: Path
    architecture: str
    context_length: int | None

    def answers_to(self, name: str) -> bool:
        return _normalize(name) in self.aliases

    @property
    def modified_at(self) -> datetime:
        """The model file's modification time, which Ollama lists."""
        return datetime.fromtimestamp(self.path.stat().st_mtime, tz=UTC)

    @property
    def size_bytes(self) -> int:
        if self.path.is_dir():
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return self.path.stat().st_size


def _served_model(primary: str, others: list[str | None], **fields) -> ServedModel:
    names = {primary, *(n for n in others if n)}
    for name in list(names):
        names.update(KNOWN_ALIASES.get(_normalize(name), ()))
    return ServedModel(id=primary, aliases=frozenset(_normalize(n) for n in names), **fields)


class ModelCatalog:
    """Resolves the `model` field of a request to the generation or the embedding model."""

    def __init__(
        self, info: cortexstream.ModelInfo, requested_model: str, requested_embedding_model: str | None
    ) -> None:
        """`info` is the engine's `ModelInfo`; the requested names are what the command line said."""
        path = Path(info.path)
        # A cache name ("smollm2") is the friendliest id; a path falls back to the file stem.
        primary = path.stem if _is_path(requested_model) else requested_model
        self.generation = _served_model(
            primary,
            [info.name, path.stem],
            is_embedding=False,
            path=path,
            architecture=info.architecture,
            context_length=info.context_length,
        )
        self.embedding: ServedModel | None = None
        if info.embedding_model:
            # The engine loaded it, so the cache resolves it (its files give size and date).
            embedding_path = cortexstream.models.resolve(requested_embedding_model or info.embedding_model)
            self.embedding = _served_model(
                info.embedding_model,
                [embedding_path.name, requested_embedding_model],
                is_embedding=True,
                path=embedding_path,
                architecture="bert",
                context_length=None,
            )

    @property
    def models(self) -> list[ServedModel]:
        return [m for m in (self.generation, self.embedding) if m is not None]

    def find(self, name: str) -> ServedModel:
        """The model answering to `name`, or a 404 `model_not_found`."""
        for model in self.models:
            if model.answers_to(name):
                return model
        raise model_not_found(name)

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
