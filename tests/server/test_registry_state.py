"""`ServerState`'s interface for routes that change the model list (`/api/pull`, `/api/delete`,
`/api/copy`): `add_model`, `remove_model`, `model_names`, on a real registry (SmolLM2, no HTTP)."""

from __future__ import annotations

import asyncio

import cortexstream
import pytest

from cortexstream.server.errors import ApiError
from cortexstream.server.served import EngineOptions, ModelEntry
from cortexstream.server.state import ServerConfig, ServerState

ENGINE = EngineOptions(threads=1, kv_cache_tokens=512, max_running=2)


@pytest.fixture()
def state():
    state = ServerState(ServerConfig(models=(ModelEntry("smollm2", "smollm2", engine=ENGINE),), engine=ENGINE))
    state.load()
    assert state.ready, state.load_error
    yield state
    state.close()


def greedy(lease: cortexstream.Lease, prompt: str, tokens: int) -> cortexstream.Completion:
    return lease.engine.generate(prompt, max_tokens=tokens, temperature=0, ignore_eos=True)


def test_add_model_serves_a_file_under_a_new_name(state):
    path = cortexstream.models.resolve("smollm2")
    state.add_model("copy", path, embedding=False)
    assert state.model_names() == ["smollm2", "copy"]
    assert [m.id for m in state.catalog.models] == ["smollm2", "copy"]

    async def use() -> int:
        async with state.leased("copy:latest", embedding=False) as held:
            return greedy(held.lease, "Hello", 3).usage.completion_tokens

    assert asyncio.run(use()) == 3
    assert "copy" in [m.name for m in state.registry.loaded()]
    with pytest.raises(ValueError, match="copy"):
        state.add_model("copy", path, embedding=False)


def test_remove_model_forgets_the_name_and_lets_running_requests_finish(state):
    state.add_model("copy", cortexstream.models.resolve("smollm2"), embedding=False)
    lease = state.registry.get("copy")
    running = lease.engine.stream("Once upon a time", max_tokens=16, temperature=0, ignore_eos=True)
    assert state.remove_model("copy") is True
    assert state.model_names() == ["smollm2"]
    with pytest.raises(ApiError) as unknown:
        state.served("copy", embedding=False)
    assert unknown.value.status == 404 and unknown.value.code == "model_not_found"
    assert "copy" not in [m.name for m in state.registry.loaded()]
    # The request that held the model finishes on it.
    assert running.wait().usage.completion_tokens == 16
    lease.release()
    assert state.remove_model("copy") is False
    assert state.remove_model("never-there") is False
