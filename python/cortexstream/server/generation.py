"""Runs one HTTP request's generations (several for `n > 1` or a list of prompts) on the engine.

Every generation is its own engine request, so they batch with each other and with other
clients' requests. Streams are opened before the HTTP response starts, so that a request the
engine rejects gets a proper error status instead of a broken stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

import cortexstream
from starlette.types import Receive

from .errors import ApiError, ClientDisconnected
from .logs import current_request_id, note_usage

_T = TypeVar("_T")


@dataclass(frozen=True)
class Job:
    """One generation: chat messages (`chat=True`) or a text / token-id prompt, plus sampling kwargs."""

    prompt: str | list[int] | list[dict]
    chat: bool
    sampling: dict


def is_negative_int(value: object) -> bool:
    """An int below zero (not a bool, nor any other type: the engine names those)."""
    return isinstance(value, int) and not isinstance(value, bool) and value < 0


def engine_seed(seed: object) -> object:
    """A negative seed means "random" (Ollama's and llama.cpp's -1): no seed for the engine.
    Anything else goes to the engine as it is, which checks it (a u64) and names `seed`."""
    return None if is_negative_int(seed) else seed


#: The lowest priority the engine takes (a signed 32-bit integer).
PRIORITY_MIN = -(2**31)


def fan_out(prompts: list, *, chat: bool, sampling: dict, n: int, priority: int = 0) -> list[Job]:
    """`n` jobs per prompt, in OpenAI's choice order; a fixed seed becomes seed, seed+1, ...
    (wrapping at 2**64) so the `n` choices differ but stay reproducible.

    The k-th job of the request gets engine priority `priority - k` (the request's `priority`
    extension, default 0; never below the engine's minimum): a request's first job competes
    with other clients' requests of its priority as an equal, its extra jobs wait behind them in
    the queue, so one request's fan-out cannot push a second client's single request back."""
    jobs = []
    for prompt in prompts:
        for i in range(n):
            seed = sampling.get("seed")
            is_count = isinstance(seed, int) and not isinstance(seed, bool)
            job_sampling = {**sampling, "seed": (seed + i) % 2**64} if is_count else sampling
            jobs.append(Job(prompt, chat, {**job_sampling, "priority": max(priority - len(jobs), PRIORITY_MIN)}))
    return jobs


async def wait_for_disconnect(receive: Receive) -> None:
    """Returns once the client has gone. Call it only after the body was read: every message
    the channel has left then is `http.disconnect` (sent when the client closes the socket, or
    once the response is complete, by which time the caller has stopped listening)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[_T]) -> _T:
    """`await work`, unless the client disconnects first: then `work` is cancelled and
    `ClientDisconnected` raised. A plain (non-streaming) response only starts once the engine is
    done, so without this watch nobody notices a client that left, and its requests run on."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(wait_for_disconnect(receive))
    try:
        await asyncio.wait((work_task, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not work_task.done():
            raise ClientDisconnected
        return work_task.result()
    finally:
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()
            work_task.add_done_callback(_consume_outcome)


def _consume_outcome(future: asyncio.Future) -> None:
    """Reads the outcome of work abandoned for a disconnect: a cancelled `gather` ends with a
    CancelledError as its exception, which asyncio would otherwise log as never retrieved."""
    if not future.cancelled():
        future.exception()


async def complete_all(engine: cortexstream.Engine, jobs: list[Job], receive: Receive) -> list[cortexstream.Completion]:
    """Runs every job to completion concurrently. One failure, or the client disconnecting,
    cancels every job in the engine."""
    streams = await submit_all(engine, jobs)
    try:
        completions = await unless_disconnected(receive, asyncio.gather(*(s.wait() for s in streams)))
    finally:
        # Requests still running (a failure elsewhere, a disconnect) end within a step and free
        # their KV blocks. Their prompt tokens count (access line, key's token limit): a client
        # leaving before its answer does not get them for free; what they generated was never read.
        for stream in streams:
            if stream.completion is None:
                stream.cancel()
                note_usage(stream.prompt_tokens, 0)
    for completion in completions:
        raise_if_failed(completion)
        note_usage(completion.usage.prompt_tokens, completion.usage.completion_tokens)
    return completions


def tagged(jobs: list[Job]) -> list[Job]:
    """`jobs` with the current HTTP request's id as their engine tag (read here, on the event
    loop: the executor thread that submits does not see the request's context)."""
    request_id = current_request_id()
    if request_id is None:
        return jobs
    return [Job(job.prompt, job.chat, {**job.sampling, "tag": request_id}) for job in jobs]


def raise_if_failed(result: cortexstream.Completion | cortexstream.Chunk) -> None:
    """The engine reports a failure inside a request (e.g. a caught panic) as finish reason
    "error"; the client gets a 500 with the engine's message."""
    if result.finish_reason == "error":
        raise ApiError(500, result.error or "generation failed", code="internal_error")


def open_streams(engine: cortexstream.Engine, jobs: list[Job]) -> list[cortexstream.AsyncStream]:
    """Submits every job; if one is rejected, the ones already submitted are cancelled."""
    streams: list[cortexstream.AsyncStream] = []
    try:
        for job in jobs:
            open_stream = engine.astream_chat if job.chat else engine.astream
            streams.append(open_stream(job.prompt, **job.sampling))
    except BaseException:
        for stream in streams:
            stream.cancel()
        raise
    return streams


async def submit_all(engine: cortexstream.Engine, jobs: list[Job]) -> list[cortexstream.AsyncStream]:
    """`open_streams` on a worker thread: submitting tokenizes the prompt and renders the chat
    template, which for a prompt of up to 16 MiB would stall every other client on the event loop.
    If the caller is cancelled meanwhile, the streams it would have got are cancelled on arrival.
    Each engine request is tagged with the HTTP request's id, so the engine's log records carry it."""
    jobs = tagged(jobs)
    submitted = asyncio.get_running_loop().run_in_executor(None, open_streams, engine, jobs)
    try:
        return await asyncio.shield(submitted)
    except asyncio.CancelledError:
        submitted.add_done_callback(_cancel_submitted)
        raise


def _cancel_submitted(submitted: asyncio.Future) -> None:
    if not submitted.cancelled() and submitted.exception() is None:
        for stream in submitted.result():
            stream.cancel()


_END = object()


async def merge_streams(
    streams: list[cortexstream.AsyncStream],
) -> AsyncIterator[tuple[int, cortexstream.Chunk]]:
    """Yields `(stream index, chunk)` as chunks arrive from any stream.

    Closing this generator (the client went away) cancels every request still running in the
    engine, so their KV cache is freed at the next step. A request that fails raises `ApiError`.
    Every request's tokens are counted (access line, API key token limit): its usage when it
    ends, or, cut short, its prompt and the tokens it had sent.
    """
    queue: asyncio.Queue = asyncio.Queue()
    finished = [False] * len(streams)
    sent = [0] * len(streams)  # tokens each stream has yielded
    counted = [False] * len(streams)  # whether its usage was noted

    async def pump(index: int, stream: cortexstream.AsyncStream) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
            await queue.put((index, _END))
        except Exception as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
            await queue.put((index, error))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        while not all(finished):
            index, item = await queue.get()
            if item is _END:
                finished[index] = True
            elif isinstance(item, Exception):
                raise item
            else:
                raise_if_failed(item)
                if item.usage is not None:
                    note_usage(item.usage.prompt_tokens, item.usage.completion_tokens)
                    counted[index] = True
                else:
                    sent[index] += 1
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for index, stream in enumerate(streams):
            if not finished[index]:
                stream.cancel()
            if not counted[index]:
                # Its last chunk (with the usage) will not be read: a client leaving just before
                # the end must not get its tokens for free.
                note_usage(stream.prompt_tokens, sent[index])
