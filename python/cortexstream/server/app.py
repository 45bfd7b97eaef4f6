"""The FastAPI application: loads the engine in the background and mounts both APIs."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from . import manage_routes, ollama_routes, openai_routes
from .auth import ApiKeys
from .bodies import JsonBodies
from .errors import RETRY_AFTER_SECONDS, install_error_handlers
from .logs import RequestLogging
from .metrics import CONTENT_TYPE, render_prometheus
from .ratelimit import Clock, KeyRing
from .state import ServerConfig, ServerState, server_state


def create_app(config: ServerConfig, *, clock: Clock = time.monotonic) -> FastAPI:
    """An app serving `config.models`; /health answers 503 until the first one has loaded.
    `clock` times the API keys' rate limits (tests move it instead of sleeping)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = ServerState(config)
        app.state.server = state
        # Loading runs in a thread so the server is already up (and /health says 503) meanwhile.
        loading = asyncio.create_task(asyncio.to_thread(state.load))
        try:
            yield
        finally:
            await loading
            state.close()

    app = FastAPI(title="cortexstream", lifespan=lifespan)
    install_error_handlers(app)
    # The last added runs first: the key is checked before any body is read.
    app.add_middleware(JsonBodies)
    app.add_middleware(ApiKeys, keys=KeyRing(config.all_api_keys, clock))
    # Outermost: every response (401s included) gets its request id and an access line.
    app.add_middleware(RequestLogging)
    app.include_router(openai_routes.router)
    app.include_router(ollama_routes.router)
    app.include_router(manage_routes.router)

    @app.get("/health")
    async def health(request: Request):
        """200 `ok` once every model is registered and the first one has loaded (the others
        load on first use, so a request for one of them may still wait for its load); 503
        `loading` until then; 503 `error` if the first model could not be loaded."""
        state = server_state(request)
        if state.ready:
            return {"status": "ok"}
        if state.load_error is not None:
            return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.get("/metrics")
    async def metrics(request: Request):
        state = server_state(request)
        snapshots = await asyncio.to_thread(state.registry.metrics) if state.ready else {}
        return PlainTextResponse(render_prometheus(snapshots, ready=state.ready), media_type=CONTENT_TYPE)

    return app
