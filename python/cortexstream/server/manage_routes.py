"""Ollama's model management on the model store: /api/pull (NDJSON progress), /api/delete, /api/copy.

The store (`cortexstream.models`) does the work in a worker thread, so the event loop keeps
serving while a pull downloads and hashes. What the store gains becomes servable by name at
once (`ServerState.add_model`); what it loses stops being served (`ServerState.remove_model`:
requests already running on it finish).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator

from cortexstream import models
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from .errors import ApiError
from .generation import unless_disconnected
from .state import ReadyState, ServerState
from .streaming import ndjson_line, ndjson_response

# The API key is checked by the `ApiKeys` middleware, before any body is read.
router = APIRouter(prefix="/api")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PullRequest(_Body):
    # Older clients send `name`, newer ones `model`.
    model: str | None = None
    name: str | None = None
    insecure: bool = False
    stream: bool = True


class DeleteRequest(_Body):
    model: str | None = None
    name: str | None = None


class CopyRequest(_Body):
    source: str
    destination: str


def _store_name(value: str | None, field: str) -> str:
    """The canonical store name in `field`, or a 400 quoting the naming rule."""
    if not value:
        raise ApiError(400, f"{field}: a model name is required", param=field, code="missing_required_parameter")
    try:
        return models.canonical_name(value)
    except models.InvalidModelNameError as error:
        raise ApiError(400, f"{field}: {error}", param=field, code="invalid_model_name") from None


def _store_error(error: Exception, field: str = "model") -> ApiError:
    """The HTTP status of a store failure: a missing model 404, a taken name 409, a download or
    checksum failure 502 (the package index gave nothing usable), anything else 500."""
    if isinstance(error, models.NoSuchModelError):
        return ApiError(404, str(error), param=field, code="model_not_found")
    if isinstance(error, models.ModelExistsError):
        return ApiError(409, str(error), param=field, code="model_exists")
    if isinstance(error, (models.ChecksumMismatchError, RuntimeError)):
        return ApiError(502, str(error), code="pull_failed")
    return ApiError(500, str(error) or type(error).__name__, code="store_error")


SUCCESS = "success"

# A pull of a name waits for a running pull of the same name (then finds it present) instead of
# downloading it twice into the same folder.
_pull_locks: dict[str, asyncio.Lock] = {}


def _serve(state: ServerState, entry: models.Entry) -> None:
    """Makes a stored model servable by its name (a name already served keeps its model)."""
    if entry.name not in state.model_names():
        state.add_model(entry.name, entry.path, entry.embedding)


def _served_names_of(state: ServerState, entry: models.Entry) -> list[str]:
    """The served names a deletion of `entry` takes away: its own, and any other name serving
    the files it deletes (`--model chat=smollm2`). An added model's file is not deleted, so
    models served from that path by another name stay."""
    names = [entry.name] if entry.name in state.model_names() else []
    deleted = entry.path.resolve()
    if not deleted.is_relative_to(models.models_dir().resolve()):
        return names  # an added model: its file stays where it is
    return names + [m.id for m in state.catalog.models if m.id != entry.name and m.path.resolve() == deleted]


def _progress_object(step: models.PullProgress) -> dict:
    return {key: value for key, value in dataclasses.asdict(step).items() if value is not None}


@router.post("/pull")
async def pull(body: PullRequest, state: ReadyState, request: Request):
    name = _store_name(body.model or body.name, "model")
    if name not in models.KNOWN_MODELS:
        raise _store_error(models.NoSuchModelError(
            f"model {name!r} cannot be pulled; known: {', '.join(sorted(models.KNOWN_MODELS))}"))
    steps = _pull_in_background(state, name)
    if body.stream:
        # A client that leaves closes the stream, which stops the pull.
        return ndjson_response(_progress_lines(steps))
    # A client that leaves cancels the wait (`ClientDisconnected`), which stops the pull.
    return await unless_disconnected(request.receive, _last_step(steps))


async def _last_step(steps: AsyncIterator[models.PullProgress | Exception]) -> JSONResponse:
    """The pull's last step as one object (`stream: false`); closing `steps` however this ends
    (the client left: this is cancelled) stops the pull."""
    last: dict = {}
    try:
        async for item in steps:
            if isinstance(item, Exception):
                raise _store_error(item)
            last = _progress_object(item)
    finally:
        await steps.aclose()
    return JSONResponse(last)


async def _pull_in_background(state: ServerState, name: str) -> AsyncIterator[models.PullProgress | Exception]:
    """Runs the pull in a worker thread and yields its progress steps as they happen, then its
    failure if it failed. Closing this before the end (the client went away) stops the pull as
    Ollama does: the download is killed and its temporary files removed; nothing is stored."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[models.PullProgress | Exception | None] = asyncio.Queue()
    cancelled = threading.Event()

    def report(step: models.PullProgress) -> None:
        # "success" is the server's to say, once the model is also servable.
        if step.status != SUCCESS:
            loop.call_soon_threadsafe(queue.put_nowait, step)

    async def run() -> None:
        try:
            async with _pull_locks.setdefault(name, asyncio.Lock()):
                [entry] = await asyncio.to_thread(models.pull, name, progress=report, cancelled=cancelled)
                _serve(state, entry)
            queue.put_nowait(models.PullProgress(SUCCESS))
        except Exception as error:  # noqa: BLE001 - handed to the client
            queue.put_nowait(error)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())
    _running_pulls.add(task)
    task.add_done_callback(_running_pulls.discard)
    try:
        while (item := await queue.get()) is not None:
            yield item
    finally:
        # Set after the end too, where it changes nothing. A pull waiting behind another of the
        # same name stops before it starts.
        cancelled.set()


#: Pulls whose client left, until they have stopped (asyncio holds tasks weakly).
_running_pulls: set[asyncio.Task] = set()


async def _progress_lines(steps: AsyncIterator[models.PullProgress | Exception]) -> AsyncIterator[str]:
    async for item in steps:
        if isinstance(item, Exception):
            yield ndjson_line(_store_error(item).ollama_body())
            return
        yield ndjson_line(_progress_object(item))


@router.delete("/delete")
async def delete(body: DeleteRequest, state: ReadyState):
    name = _store_name(body.model or body.name, "model")
    try:
        entry = await asyncio.to_thread(models.get, name)
    except models.StoreError as error:
        raise _store_error(error) from None
    # First no new requests, then the files: requests already running keep their open model.
    for served in _served_names_of(state, entry):
        state.remove_model(served)
    try:
        await asyncio.to_thread(models.remove, name)
    except (models.StoreError, OSError) as error:
        raise _store_error(error) from None
    return JSONResponse({})


@router.post("/copy")
async def copy(body: CopyRequest, state: ReadyState):
    source = _store_name(body.source, "source")
    destination = _store_name(body.destination, "destination")
    if destination in state.model_names():
        # Served from elsewhere (the command line, a config file): a copy would hide behind it.
        raise ApiError(409, f"a model named {destination!r} is already served", param="destination",
                       code="model_exists")
    try:
        entry = await asyncio.to_thread(models.copy, source, destination)
    except models.NoSuchModelError as error:
        raise _store_error(error, "source") from None
    except (models.StoreError, OSError) as error:
        raise _store_error(error, "destination") from None
    _serve(state, entry)
    return JSONResponse({})
