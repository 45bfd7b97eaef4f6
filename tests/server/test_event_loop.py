"""Engine submission (which tokenizes the prompt and renders the chat template, for a prompt of
up to 16 MiB) runs on a worker thread, never on the event loop that serves every other client.

No model is needed: the app runs in-process on a stand-in engine that records the thread each
submission arrives on, through every generating route, streamed and not.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from cortexstream.server.app import create_app
from cortexstream.server.catalog import ServedModel
from cortexstream.server.state import ServerConfig

USAGE = SimpleNamespace(prompt_tokens=3, completion_tokens=1, cached_prompt_tokens=0)
TIMINGS = SimpleNamespace(total_ns=1, prefill_ns=1, decode_ns=1)
FINISHED = SimpleNamespace(text="ok", finish_reason="stop", stop_reason=None, tool_calls=[], logprobs=None, usage=USAGE,
                           timings=TIMINGS, error=None)


class FinishedStream:
    """A request that already ended: one final chunk, or its completion."""

    def __init__(self) -> None:
        self.completion = None
        self.sent = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.sent:
            raise StopAsyncIteration
        self.sent = True
        return FINISHED

    async def wait(self):
        self.completion = FINISHED
        return FINISHED

    def cancel(self) -> None:
        pass


class RecordingEngine:
    """Stands in for `cortexstream.Engine`: records the thread every submission runs on, and
    the engine options it was given."""

    def __init__(self) -> None:
        self.submitted_on: list[threading.Thread] = []
        self.sampling: list[dict] = []
        # The server names the serving model on each request's access log line.
        self.model_info = SimpleNamespace(name="recording")

    def _submit(self, sampling: dict) -> FinishedStream:
        self.submitted_on.append(threading.current_thread())
        self.sampling.append(sampling)
        return FinishedStream()

    def astream(self, prompt, **sampling) -> FinishedStream:
        return self._submit(sampling)

    def astream_chat(self, messages, **sampling) -> FinishedStream:
        return self._submit(sampling)

    def detokenize(self, ids) -> str:
        return ""


class HeldEngine:
    """Stands in for the lease a route holds: its engine, and a stream that keeps it."""

    def __init__(self, engine: RecordingEngine) -> None:
        self.engine = engine

    def hold_while(self, lines):
        return lines


class LeasingState:
    """Stands in for a loaded server's state: every model name is `model` (the catalog's own
    `ServedModel`, default request options included) and leases the stand-in engine."""

    def __init__(self, engine: RecordingEngine, model: ServedModel | None = None) -> None:
        self.ready, self.load_error, self.config = True, None, ServerConfig()
        self.engine = engine
        self.model = model or ServedModel(id="m", is_embedding=False, path=Path("m.gguf"))

    def served(self, name, *, embedding):
        return self.model

    @asynccontextmanager
    async def leased(self, name, *, embedding, keep_alive=None):
        yield HeldEngine(self.engine)


CHAT = [{"role": "user", "content": "hi"}]
ROUTES = [
    ("/v1/chat/completions", {"model": "m", "messages": CHAT}),
    ("/v1/completions", {"model": "m", "prompt": "hi"}),
    ("/v1/completions", {"model": "m", "prompt": ["a", "b"], "n": 2}),
    ("/api/generate", {"model": "m", "prompt": "hi"}),
    ("/api/generate", {"model": "m", "prompt": "hi", "raw": True}),
    ("/api/chat", {"model": "m", "messages": CHAT}),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(ROUTES)])
def test_submission_runs_off_the_event_loop(path, body, stream):
    engine = RecordingEngine()
    app = create_app(ServerConfig())
    # No lifespan (no model): the state a loaded server has, with the stand-in engine.
    app.state.server = LeasingState(engine)

    async def call() -> tuple[httpx.Response, threading.Thread]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(path, json={**body, "stream": stream})
        return response, threading.current_thread()

    response, loop_thread = asyncio.run(call())
    assert response.status_code == 200, response.text
    assert engine.submitted_on, "the route submitted nothing"
    assert all(thread is not loop_thread for thread in engine.submitted_on), \
        [thread.name for thread in engine.submitted_on]
