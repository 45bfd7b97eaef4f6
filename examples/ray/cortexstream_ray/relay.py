"""Runs an ASGI app in-process for one forwarded request and yields what it sends.

The engine replica serves the very FastAPI app `cortexstream-server` serves; this relay plays
the HTTP server's part for it: the request body arrives whole (the gateway read it), the
response's messages go back to the gateway as a stream, and when the gateway goes away (the
client disconnected, Serve cancels this call) the app sees what a real server would show it:
`receive()` answers `http.disconnect` and `send()` fails, so the app cancels its engine requests
exactly as it does behind uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from starlette.types import ASGIApp, Message, Scope

log = logging.getLogger("ray.serve")

#: Seconds the app may take to wind down after a disconnect before its task is cancelled.
DISCONNECT_GRACE_S = 10.0
#: Seconds between readiness checks while the model loads (a wait, not work).
READY_POLL_S = 0.2

#: The parts of an HTTP scope the gateway forwards (the rest is its own server's state).
SCOPE_KEYS = ("type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string",
              "headers", "client", "server")


def forwarded_scope(scope: Scope) -> dict[str, Any]:
    """A picklable copy of an HTTP scope, rooted at "/" (the app's own routes)."""
    forwarded = {key: scope[key] for key in SCOPE_KEYS if key in scope}
    forwarded["headers"] = [(bytes(name), bytes(value)) for name, value in scope.get("headers", [])]
    forwarded["root_path"] = ""
    return forwarded


class ModelLoadError(RuntimeError):
    """The replica's app reported that its model failed to load."""


class AsgiRelay:
    """Owns one ASGI app: its lifespan (startup, shutdown) and the requests forwarded to it."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._lifespan = AsyncExitStack()

    async def start(self, ready_timeout_s: float) -> None:
        """Runs the app's startup and waits until its /health answers 200.

        Raises ModelLoadError when /health reports a load error, TimeoutError when it is not
        ready within `ready_timeout_s`."""
        await self._lifespan.enter_async_context(self._app.router.lifespan_context(self._app))
        deadline = asyncio.get_running_loop().time() + ready_timeout_s
        while True:
            status, body = await self.call("GET", "/health")
            if status == 200:
                return
            if b'"error"' in body:
                raise ModelLoadError(body.decode(errors="replace"))
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the model did not load within {ready_timeout_s}s: {body!r}")
            await asyncio.sleep(READY_POLL_S)

    async def close(self) -> None:
        await self._lifespan.aclose()

    async def call(self, method: str, path: str,
                   headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, bytes]:
        """One request without a body, answered whole: (status, body)."""
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "headers": list(headers), "root_path": "", "client": None, "server": None}
        status, chunks = 500, []
        async for message in self.stream(scope, b""):
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                chunks.append(message.get("body", b""))
        return status, b"".join(chunks)

    async def stream(self, scope: Scope, body: bytes,
                     extra_headers: list[tuple[bytes, bytes]] = ()) -> AsyncIterator[Message]:
        """Runs the app on one request; yields its `http.response.*` messages as it sends them,
        `extra_headers` added to the start message. Closing or cancelling this generator before
        the end disconnects the request in the app."""
        outbox: asyncio.Queue[Message | None] = asyncio.Queue()
        gone = asyncio.Event()
        receive = _receiver(body, gone)

        async def send(message: Message) -> None:
            if gone.is_set():
                # What uvicorn does when the socket is closed; Starlette ends the response.
                raise OSError("the client disconnected")
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
            await outbox.put(message)

        task = asyncio.create_task(self._app(scope, receive, send))
        task.add_done_callback(lambda _: outbox.put_nowait(None))
        try:
            while (message := await outbox.get()) is not None:
                yield message
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    return
            # The app returned or raised without finishing its response.
            task.result()
            raise RuntimeError("the app ended without a complete response")
        finally:
            gone.set()
            await _wind_down(task)


def _receiver(body: bytes, gone: asyncio.Event) -> Callable[[], Awaitable[Message]]:
    """The app's `receive`: the whole body once, then `http.disconnect` when the client leaves."""
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


async def _wind_down(task: asyncio.Task) -> None:
    """Lets the app finish its disconnect handling (cancelling engine requests), then makes sure
    its task is over. Shielded: it runs while this generator is itself being cancelled."""
    if not task.done():
        done, _ = await asyncio.shield(asyncio.wait({task}, timeout=DISCONNECT_GRACE_S))
        if not done:
            task.cancel()
            return
    if not task.cancelled() and task.exception() is not None:
        # After a complete response (or a disconnect) nobody else reads it: log it once.
        log.warning("the app failed after its response: %r", task.exception())
