"""The server's configuration, its model registry (the first model loaded in the background),
and the request guards."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import cortexstream
from cortexstream import models
from fastapi import Depends, Request

from .catalog import ModelCatalog, ServedModel
from .config_file import ApiKey
from .errors import RETRY_AFTER_SECONDS, ApiError, model_not_found
from .logs import note_model, note_usage
from .served import DEFAULT_MODEL, NO_EMBEDDING_MODEL, EngineOptions, ModelEntry

log = logging.getLogger("cortexstream.server")

__all__ = [
    "DEFAULT_KEEP_ALIVE", "DEFAULT_MAX_RUNNING", "NO_EMBEDDING_MODEL", "EngineOptions", "ModelEntry", "ReadyState",
    "ServerConfig", "ServerState", "ready_state", "server_state",
]

#: The core's default number of running sequences (`EngineConfig::max_running`).
DEFAULT_MAX_RUNNING = 32

#: How long an idle model stays loaded when neither its entry nor the request says (Ollama's default).
DEFAULT_KEEP_ALIVE = "5m"


@dataclass(frozen=True)
class ServerConfig:
    """What the command line (or a config file) chose. `models[0]` is loaded at start; the
    others on first use. `engine` is the command line's engine settings: every model of the
    command line has them, and so does a model added later (`ServerState.add_model`)."""

    models: tuple[ModelEntry, ...] = (ModelEntry(DEFAULT_MODEL, DEFAULT_MODEL),)
    api_key: str | None = None
    """One key without limits (`--api-key`, `$CORTEXSTREAM_API_KEY`)."""
    api_keys: tuple[ApiKey, ...] = ()
    """Keys with their own rate limits (`[[api_keys]]` of the config file)."""
    engine: EngineOptions = EngineOptions()
    memory_budget_bytes: int | None = None
    """Most bytes of loaded models; idle ones unload, least recently used first, to make room."""
    keep_alive: float | str = DEFAULT_KEEP_ALIVE
    """Idle time before a model unloads (Ollama's: seconds or "5m"; 0 at once; negative never)."""

    @property
    def all_api_keys(self) -> tuple[ApiKey, ...]:
        """Every key a client may send: the limited ones, then the unlimited `api_key`."""
        unlimited = (ApiKey(name="api-key", secret=self.api_key),) if self.api_key else ()
        return (*self.api_keys, *unlimited)

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
    """The served models, in a `cortexstream.Registry`: each loads on first use (the first one
    at start) and unloads after its keep-alive, or to fit the memory budget. Until the first
    model has loaded every model endpoint answers 503.

    The interface for routes that change the model list (`/api/pull`, `/api/delete`,
    `/api/copy`), callable from any thread once the server is ready:

    - `add_model(name, path, embedding)` registers the GGUF file (or, with `embedding=True`,
      the sentence-transformers folder) at `path` under `name`, with the server's engine
      settings and keep-alive; it loads on first use. Raises `ValueError` for a name already
      served, `cortexstream.InvalidRequestError` for an invalid name.
    - `remove_model(name) -> bool` forgets `name` (the registered name, not an alias): later
      requests for it answer 404, requests already running on it finish first, then it is
      freed. `False` if no model had that name.
    - `model_names() -> list[str]` the registered names, in registration order.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.registry: cortexstream.Registry | None = None
        self.catalog = ModelCatalog()
        self.load_error: str | None = None
        self._ready = False

    def load(self) -> None:
        """Registers every model and loads the first (blocking: run it off the event loop)."""
        config = self.config
        try:
            self.registry = cortexstream.Registry(memory_budget_bytes=config.memory_budget_bytes,
                                                  keep_alive=config.keep_alive)
            for entry in config.models:
                self._register(entry)
            if config.models:
                first = self.catalog.find(config.models[0].name)
                with self.registry.get(first.id) as lease:
                    self._learn(first, lease)
        except Exception as error:  # noqa: BLE001 - reported by /health and every endpoint
            self.load_error = str(error)
            log.error("cannot load the model: %s", error)
            return
        self._ready = True
        log.info("serving %s", ", ".join(self.model_names()))

    def _register(self, entry: ModelEntry) -> ServedModel:
        path = entry.path()
        self.registry.register(entry.name, path, **entry.register_kwargs())
        return self.catalog.add(entry, path)

    def close(self) -> None:
        """Unloads every model, ending the requests still running on them (as cancelled)."""
        if self.registry is not None:
            self.registry.shutdown()

    @property
    def ready(self) -> bool:
        return self._ready

    # --- the model list ----------------------------------------------------------------------

    def add_model(self, name: str, path: Path, embedding: bool) -> None:
        """Registers `path` under `name` (see the class documentation)."""
        if name in self.model_names():
            raise ValueError(f"a model named {name!r} is already served")
        entry = ModelEntry(name=name, source=str(path), embedding=embedding, engine=self.config.engine)
        self._require_registry()
        self._register(entry)

    def remove_model(self, name: str) -> bool:
        """Forgets `name` (see the class documentation)."""
        registry = self._require_registry()
        self.catalog.remove(name)
        return registry.unregister(name)

    def model_names(self) -> list[str]:
        """The registered names, in registration order."""
        return [model.id for model in self.catalog.models]

    def _require_registry(self) -> cortexstream.Registry:
        if self.registry is None:
            raise RuntimeError("the server has not started its model registry yet")
        return self.registry

    # --- leases ------------------------------------------------------------------------------

    def served(self, name: str, *, embedding: bool) -> ServedModel:
        """The model a request's `model` names: 404 if none, 400 if it cannot do the job. A
        name the server was not started with is looked up in the model store, so a model pulled,
        copied or added there (`python -m cortexstream pull|cp|add`) after start is served by
        its store name, as Ollama serves whatever its store holds."""
        if not self.catalog.knows(name):
            self._serve_from_store(name)
        return self.catalog.embedding_model(name) if embedding else self.catalog.generation_model(name)

    def _serve_from_store(self, name: str) -> None:
        """Registers the store's model `name`; a name the store does not hold (or cannot be a
        store name) is left for the catalog's 404."""
        try:
            entry = models.get(name)
        except (models.InvalidModelNameError, models.NoSuchModelError):
            return
        if self.registry is not None and entry.name not in self.model_names():
            self.add_model(entry.name, entry.path, entry.embedding)

    async def lease(self, name: str, *, embedding: bool, keep_alive=None) -> cortexstream.Lease:
        """A lease on the model `name` answers to, loaded first if it is not (off the event loop).
        `keep_alive` (the request's) becomes the model's from now on. The caller releases it."""
        model = self.served(name, embedding=embedding)
        registry = self._require_registry()
        note_model(model.id)
        taking = asyncio.get_running_loop().run_in_executor(None, registry.get, model.id, keep_alive)
        try:
            lease = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # The client left while the model loaded: the lease, when it comes, is not needed.
            taking.add_done_callback(_release_taken)
            raise
        except cortexstream.ModelNotFoundError:
            # Removed between the lookup and the lease.
            raise model_not_found(name) from None
        self._learn(model, lease)
        return lease

    @staticmethod
    def _learn(model: ServedModel, lease: cortexstream.Lease) -> None:
        engine = lease.engine
        if engine is not None and not model.described:
            model.learn(engine.model_info)

    async def described(self, name: str) -> ServedModel:
        """The model `name` answers to, with what its GGUF says (template, parameters,
        quantization, served context length): read from the file's metadata, without loading
        the model (nor counting as a use of it) when it has not been loaded since start."""
        model = self.catalog.find(name)
        if not model.described:
            registry = self._require_registry()
            try:
                description = await asyncio.to_thread(registry.describe, model.id)
            except cortexstream.ModelNotFoundError:
                raise model_not_found(name) from None  # removed meanwhile
            if description is not None:
                model.learn(description)
        return model

    @asynccontextmanager
    async def leased(self, name: str, *, embedding: bool, keep_alive=None) -> AsyncIterator[HeldLease]:
        """`async with state.leased(body.model, embedding=False) as held:` a lease released when
        the block ends, unless `held.hold_while(lines)` handed it to a streamed response."""
        lease = await self.lease(name, embedding=embedding, keep_alive=keep_alive)
        held = HeldLease(lease)
        try:
            yield held
        finally:
            if not held.handed_over:
                release_soon(held.lease)


def _release_taken(taking: asyncio.Future) -> None:
    if not taking.cancelled() and taking.exception() is None:
        release_soon(taking.result())


def release_soon(lease: cortexstream.Lease) -> None:
    """Releases `lease` on a worker thread: the release may unload the model (keep_alive 0),
    which joins its engine thread, and must neither stall the event loop nor be cancelled."""
    try:
        asyncio.get_running_loop().run_in_executor(None, lease.release)
    except RuntimeError:  # no running loop (shutdown): release here
        lease.release()


class HeldLease:
    """A request's lease; `hold_while` hands it to the response stream that outlives the route.
    (A model's default request options are `ServedModel.with_defaults`, applied before leasing.)"""

    def __init__(self, lease: cortexstream.Lease) -> None:
        self.lease = lease
        self.handed_over = False

    async def embed_with_usage(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Embeds `texts` off the event loop (the embedding model blocks) and counts their tokens
        for the access line and the API key's token limit, as a generation's are."""
        vectors, tokens = await asyncio.to_thread(self.lease.embed_with_usage, texts)
        note_usage(tokens, 0)
        return vectors, tokens

    @property
    def engine(self) -> cortexstream.Engine:
        return self.lease.engine

    def hold_while(self, lines: AsyncIterator[str]) -> LeasedLines:
        self.handed_over = True
        return LeasedLines(self.lease, lines)


class LeasedLines:
    """The lines of a streamed response, holding the model's lease until the stream ends or is
    closed (the client went away: `CancellingStreamingResponse` always closes it, even when it
    never started, which an async generator's `finally` would not see)."""

    def __init__(self, lease: cortexstream.Lease, lines: AsyncIterator[str]) -> None:
        self._lease: cortexstream.Lease | None = lease
        self._lines = lines

    def __aiter__(self) -> LeasedLines:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._lines.__anext__()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        try:
            await self._lines.aclose()
        finally:
            lease, self._lease = self._lease, None
            if lease is not None:
                release_soon(lease)


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def ready_state(request: Request) -> ServerState:
    """FastAPI dependency: the state of a server whose first model has loaded, else 503."""
    state = server_state(request)
    if state.load_error is not None:
        raise ApiError(503, f"the model failed to load: {state.load_error}", code="model_load_error")
    if not state.ready:
        raise ApiError(503, "the model is still loading", code="loading", retry_after=RETRY_AFTER_SECONDS)
    return state


#: Route parameter type: the state of a server whose first model is ready (else the route answers 503).
ReadyState = Annotated[ServerState, Depends(ready_state)]
