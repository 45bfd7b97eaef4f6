"""Shutdown with a bounded drain: requests finish if they can, then end cleanly if they cannot.

On SIGTERM/SIGINT uvicorn stops accepting connections and waits for open ones. Left alone it
would wait forever for a long generation, or (with a graceful-shutdown timeout) cut the
connections mid-stream. Here, once `drain_seconds` have passed, the engine is closed instead:
every request still running ends at once with the engine's finish reason "cancelled" (sent on
/v1 as OpenAI's "length" plus `cortexstream_finish_reason: "cancelled"`, see openai_format.py),
which its stream sends as a last event before `[DONE]`, so clients see an end rather than a
dropped connection.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("cortexstream.server")

#: After the engine closed, streams end within a step; past this, uvicorn cancels what is left.
ENGINE_CLOSE_GRACE_S = 5.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, *, drain_seconds: float) -> None:
        config.timeout_graceful_shutdown = drain_seconds + ENGINE_CLOSE_GRACE_S
        super().__init__(config)
        self.served_app = app
        self.drain_seconds = drain_seconds

    async def shutdown(self, sockets=None) -> None:
        closer = asyncio.create_task(self._close_engine_after_drain())
        try:
            await super().shutdown(sockets)
        finally:
            closer.cancel()

    async def _close_engine_after_drain(self) -> None:
        await asyncio.sleep(self.drain_seconds)
        state = getattr(self.served_app.state, "server", None)
        if state is None or not state.ready:
            return
        running = sum(snapshot.get("running", 0) for snapshot in state.registry.metrics().values())
        log.warning("shutdown: closing the engine after %.1fs of draining; %d running request(s) end as "
                    "cancelled", self.drain_seconds, running)
        await asyncio.to_thread(state.close)
