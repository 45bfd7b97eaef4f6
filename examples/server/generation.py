"""Runs one HTTP request's generations (several for `n > 1` or a list of prompts) on the engine.

Every generation is its own engine request, so they batch with each other and with other
clients' requests. Streams are opened before the HTTP response starts, so that a request the
engine rejects gets a proper error status instead of a broken stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import cortexstream

from .errors import ApiError


@dataclass(frozen=True)
class Job:
    """One generation: chat messages (`chat=True`) or a text / token-id prompt, plus sampling kwargs."""

    prompt: str | list[int] | list[dict]
    chat: bool
    sampling: dict


def engine_seed(seed: int | None) -> int | None:
    """The engine wants a u64 seed; negative seeds mean "random" (Ollama's and llama.cpp's -1)."""
    return None if seed is None or seed < 0 else seed


def fan_out(prompts: list, *, chat: bool, sampling: dict, n: int) -> list[Job]:
    """`n` jobs per prompt, in OpenAI's choice order; a fixed seed becomes seed, seed+1, ...
    (wrapping at 2**64) so the `n` choices differ but stay reproducible."""
    jobs = []
    for prompt in prompts:
        for i in range(n):
            seed = sampling.get("seed")
            job_sampling = sampling if seed is None else {**sampling, "seed": (seed + i) % 2**64}
            jobs.append(Job(prompt, chat, job_sampling))
    return jobs


async def complete_all(engine: cortexstream.Engine, jobs: list[Job]) -> list[cortexstream.Completion]:
    """Runs every job to completion concurrently; one failure cancels the others."""
    calls = [
        engine.achat(job.prompt, **job.sampling) if job.chat else engine.agenerate(job.prompt, **job.sampling)
        for job in jobs
    ]
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        completions = list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
    for completion in completions:
        raise_if_failed(completion)
    return completions


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


_END = object()


async def merge_streams(
    streams: list[cortexstream.AsyncStream],
) -> AsyncIterator[tuple[int, cortexstream.Chunk]]:
    """Yields `(stream index, chunk)` as chunks arrive from any stream.

    Closing this generator (the client went away) cancels every request still running in the
    engine, so their KV cache is freed at the next step. A request that fails raises `ApiError`.
    """
    queue: asyncio.Queue = asyncio.Queue()
    finished = [False] * len(streams)

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
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for index, stream in enumerate(streams):
            if not finished[index]:
                stream.cancel()
