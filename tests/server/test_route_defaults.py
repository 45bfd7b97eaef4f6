"""A model's default request options (a config file's `[models.defaults]`) reach the engine the
same way on every generating route, streamed or not: the defaults under the request's own
values. One definition (`ServedModel.with_defaults`) merges them; this test would see a route
that merged them its own way (or not at all).

No model is needed: the app runs in-process on the stand-in engine of `test_event_loop`, which
records the options of every submission, over the catalog's real `ServedModel`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from cortexstream.server.app import create_app
from cortexstream.server.catalog import ServedModel
from cortexstream.server.state import ServerConfig
from test_event_loop import ROUTES, LeasingState, RecordingEngine

DEFAULTS = {"max_tokens": 3, "temperature": 0.25, "top_k": 7, "stop": ["\n\n"]}

#: The request's own top_k, as each route spells it: it wins over the model's default.
OWN_TOP_K = {"/v1/chat/completions": {"top_k": 2}, "/v1/completions": {"top_k": 2},
             "/api/generate": {"options": {"top_k": 2}}, "/api/chat": {"options": {"top_k": 2}}}


def submitted_options(path: str, body: dict) -> list[dict]:
    engine = RecordingEngine()
    model = ServedModel(id="m", is_embedding=False, path=Path("m.gguf"), defaults=DEFAULTS)
    app = create_app(ServerConfig())
    app.state.server = LeasingState(engine, model)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post(path, json=body)

    response = asyncio.run(call())
    assert response.status_code == 200, response.text
    assert engine.sampling, "the route submitted nothing"
    return engine.sampling


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(ROUTES)])
def test_every_route_gives_the_engine_the_model_defaults_under_the_request_values(path, body, stream):
    for options in submitted_options(path, {**body, **OWN_TOP_K[path], "stream": stream}):
        assert options["top_k"] == 2, options
        assert {k: options.get(k) for k in ("max_tokens", "temperature", "stop")} == \
            {"max_tokens": 3, "temperature": 0.25, "stop": ["\n\n"]}, options
