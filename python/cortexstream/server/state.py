"""The server's configuration, its engine (loaded in the background), and the request guards."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

import cortexstream
from fastapi import Depends, Request

from .catalog import ModelCatalog
from .errors import RETRY_AFTER_SECONDS, ApiError

log = logging.getLogger("cortexstream.server")

#: `--embedding-model none` serves no embedding model.
NO_EMBEDDING_MODEL = "none"

#: The core's default number of running sequences (`EngineConfig::max_running`).
DEFAULT_MAX_RUNNING = 32


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

    def as_kwargs(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if value is not None}


@dataclass(frozen=True)
class ServerConfig:
    """What the command line chose. `embedding_model=None` means the engine's default (minilm)."""

    model: str = "smollm2"
    embedding_model: str | None = None
    api_key: str | None = None
    engine: EngineOptions = EngineOptions()

    @property
    def max_running(self) -> int:
        return self.engine.max_running or DEFAULT_MAX_RUNNING

    @property
    def max_fan_out(self) -> int:
        """Most generations one request may ask for (prompts x `n`): half the running slots
        (at least 1), so one request cannot take every slot, and the other half stays free for
        other clients' requests while a largest fan-out runs."""
        return max(1, self.max_running // 2)


class ServerState:
    """Holds the engine once it has loaded; until then every model endpoint answers 503."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.engine: cortexstream.Engine | None = None
        self.catalog: ModelCatalog | None = None
        self.load_error: str | None = None

    def load(self) -> None:
        """Loads the models (blocking: run it off the event loop)."""
        config = self.config
        embedding = False if config.embedding_model == NO_EMBEDDING_MODEL else config.embedding_model
        try:
            engine = cortexstream.Engine(config.model, embedding_model=embedding, **config.engine.as_kwargs())
            self.catalog = ModelCatalog(engine.model_info, config.model, config.embedding_model)
        except Exception as error:  # noqa: BLE001 - reported by /health and every endpoint
            self.load_error = str(error)
            log.error("cannot load the model: %s", error)
            return
        self.engine = engine
        log.info("serving %s", ", ".join(m.id for m in self.catalog.models))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    @property
    def ready(self) -> bool:
        return self.engine is not None


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def ready_state(request: Request) -> ServerState:
    """FastAPI dependency: the state of a server whose engine is ready, else 503."""
    state = server_state(request)
    if state.load_error is not None:
        raise ApiError(503, f"the model failed to load: {state.load_error}", code="model_load_error")
    if not state.ready:
        raise ApiError(503, "the model is still loading", code="loading", retry_after=RETRY_AFTER_SECONDS)
    return state


#: Route parameter type: the state of a server whose engine is ready (else the route answers 503).
ReadyState = Annotated[ServerState, Depends(ready_state)]
