"""asyncio front end of a :class:`~cortexstream.Stream`.

Waiting for the next chunk is a blocking, GIL-free call in Rust, so it runs on a worker
thread and the event loop stays free. Chunks that already arrived are taken without a
thread hop. Cancelling the consuming task cancels the request in the engine.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

from ._core import Chunk, Completion, Stream

# Each stream that is waiting holds one worker while its request runs or queues. A pool of
# our own, sized for a full engine (running + queued requests), keeps one busy stream from
# delaying another behind the loop's small default executor. Threads start only when needed.
_WAITERS = ThreadPoolExecutor(max_workers=512, thread_name_prefix="cortexstream-wait")

_T = TypeVar("_T")


class AsyncStream:
    """Async iterator of :class:`Chunk` for one request; also an async context manager.

    Breaking out, :meth:`aclose`, garbage collection or cancelling the consuming task
    cancels the request in the engine.
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    @property
    def request_id(self) -> int:
        """The engine's id of this request."""
        return self._stream.request_id

    @property
    def prompt_tokens(self) -> int:
        """Number of prompt tokens."""
        return self._stream.prompt_tokens

    @property
    def completion(self) -> Optional[Completion]:
        """The whole result, once the last chunk has been read."""
        return self._stream.completion

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Chunk:
        chunk = self._stream.next_chunk(0)
        if chunk is None and not self._stream.finished:
            chunk = await self._off_loop(self._stream.next_chunk)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def wait(self) -> Completion:
        """Reads the remaining chunks and returns the completion."""
        return await self._off_loop(self._stream.wait)

    def cancel(self) -> None:
        """Asks the engine to stop; the stream then ends with finish_reason ``"cancelled"``."""
        self._stream.cancel()

    async def aclose(self) -> None:
        """Cancels the request (if still running) and ends the stream now."""
        self._stream.close()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _off_loop(self, wait: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(_WAITERS, wait)
        except asyncio.CancelledError:
            # The worker keeps waiting until the engine ends the request, which cancelling
            # makes happen within one step.
            self._stream.cancel()
            raise
