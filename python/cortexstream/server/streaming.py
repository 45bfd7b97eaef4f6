"""Streaming responses that cancel their engine requests when the client disconnects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class CancellingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body generator.

    Starlette stops iterating when the client disconnects but may leave the generator suspended
    at a `yield`, to be finalized whenever it is garbage-collected. Closing it here runs its
    `finally` at once, which cancels the engine requests behind it.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def sse_event(payload: dict | str) -> str:
    """One server-sent event as OpenAI sends it: `data: <json>` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def ndjson_line(payload: dict) -> str:
    """One line of Ollama's newline-delimited JSON stream."""
    return json.dumps(payload, separators=(",", ":")) + "\n"


def sse_response(events: AsyncIterator[str]) -> CancellingStreamingResponse:
    # X-Accel-Buffering stops reverse proxies (nginx) from holding chunks back.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return CancellingStreamingResponse(events, media_type="text/event-stream", headers=headers)


def ndjson_response(lines: AsyncIterator[str]) -> CancellingStreamingResponse:
    return CancellingStreamingResponse(lines, media_type="application/x-ndjson")
