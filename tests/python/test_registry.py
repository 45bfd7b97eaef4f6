"""cortexstream.Registry: SmolLM2 under two names with different settings, plus MiniLM."""

from __future__ import annotations

import threading

import pytest

import cortexstream
from cortexstream import InvalidRequestError, ModelNotFoundError


def make_registry(**options) -> cortexstream.Registry:
    registry = cortexstream.Registry(**options)
    registry.register("small", "smollm2", context_length=256, kv_cache_tokens=1024, max_running=4, threads=1)
    registry.register("large", "smollm2", kv_cache_tokens=1024, max_running=4, threads=1)
    registry.register("minilm", "minilm", embedding=True, threads=1)
    return registry


@pytest.fixture
def registry():
    with make_registry() as registry:
        yield registry


def loaded_names(registry: cortexstream.Registry) -> list:
    return [m.name for m in registry.loaded()]


def test_models_by_name_with_their_own_settings(registry):
    assert registry.names() == ["large", "minilm", "small"]
    assert registry.loaded() == []
    with registry.get("small") as small, registry.get("large") as large, registry.get("minilm") as minilm:
        assert small.engine.model_info.context_length == 256
        assert large.engine.model_info.context_length == 1024
        assert minilm.engine is None and minilm.is_embedding
        texts = []
        for prompt in ["The capital of France is", "Once upon a time"]:
            texts.append(small.engine.generate(prompt, max_tokens=6, temperature=0, ignore_eos=True).text)
            texts.append(large.engine.generate(prompt, max_tokens=6, temperature=0, ignore_eos=True).text)
            assert len(minilm.embed(prompt)[0]) == 384
        assert texts[0] == texts[1] and texts[2] == texts[3] and texts[0] != texts[2]
        listed = {m.name: m for m in registry.loaded()}
        assert set(listed) == {"large", "minilm", "small"}
        assert all(m.active_requests == 1 for m in listed.values())
        assert listed["small"].memory_bytes > 90_000_000
        assert listed["small"].expires_at is not None


def test_unknown_model_names_it_and_the_known_ones(registry):
    with pytest.raises(ModelNotFoundError, match="gpt-4.*large, minilm, small"):
        registry.get("gpt-4")
    with pytest.raises(InvalidRequestError) as bad:
        registry.get("small", keep_alive="soon")
    assert bad.value.param == "keep_alive"
    with pytest.raises(InvalidRequestError) as duplicate:
        registry.register("small", "smollm2")
    assert duplicate.value.param == "name"


def test_keep_alive_zero_and_forever(registry):
    registry.load("small", keep_alive=0)
    assert loaded_names(registry) == []
    registry.load("large", keep_alive=-1)
    assert [m.expires_at for m in registry.loaded()] == [None]
    registry.load("minilm", keep_alive="1h")
    assert loaded_names(registry) == ["large", "minilm"]
    assert registry.unload("large") is True
    assert registry.unload("large") is False


def test_a_budget_for_one_model_keeps_the_most_recent():
    with make_registry(memory_budget_bytes=150_000_000) as registry:
        registry.load("small")
        registry.load("large")
        assert loaded_names(registry) == ["large"]


def test_a_request_racing_an_unload_is_served(registry):
    lease = registry.get("small")
    stream = lease.engine.stream("Tell me a story", max_tokens=32, temperature=0, ignore_eos=True)
    unloader = threading.Thread(target=registry.unload, args=("small",))
    unloader.start()
    completion = stream.wait()
    unloader.join()
    assert completion.finish_reason == "length"
    assert completion.usage.completion_tokens == 32
    assert loaded_names(registry) == []
    lease.release()
    lease.release()
    with pytest.raises(cortexstream.EngineClosedError):
        lease.embed("x")


def test_a_leased_engine_is_a_full_engine_that_close_does_not_stop(registry):
    import asyncio

    with registry.get("small") as lease:
        engine = lease.engine
        assert isinstance(engine, cortexstream.Engine)
        completion = asyncio.run(engine.agenerate("Hello", max_tokens=3, temperature=0, ignore_eos=True))
        assert completion.usage.completion_tokens == 3
        engine.close()  # the registry owns the model: this leaves it running
        assert not engine.closed
        assert lease.engine.generate("Hi", max_tokens=2, ignore_eos=True).usage.completion_tokens == 2
    with registry.get("minilm") as minilm:
        assert minilm.engine is None


def test_unregister_metrics_and_shutdown(registry):
    with registry.get("small") as small:
        small.engine.generate("Hi", max_tokens=2, temperature=0, ignore_eos=True)
    with registry.get("minilm") as minilm:
        _, tokens = minilm.embed_with_usage(["one", "two three"])
    metrics = registry.metrics()
    assert list(metrics) == ["minilm", "small"] and metrics["small"]["generated_tokens_total"] == 2
    # An embedding model's counters too (the REST server's /metrics renders them).
    assert metrics["minilm"] == {"embedding_requests": 1, "embedding_tokens_total": tokens} and tokens == 7
    # That reading them is not a use (keep-alive, LRU) is held by the core's test on a manual clock.
    assert registry.unregister("small") is True
    assert registry.names() == ["large", "minilm"] and loaded_names(registry) == ["minilm"]
    with pytest.raises(ModelNotFoundError):
        registry.get("small")
    assert registry.unregister("small") is False
    # Shutdown ends what a lease still runs.
    lease = registry.get("large")
    stream = lease.engine.stream("Once upon a time", max_tokens=500, ignore_eos=True)
    registry.shutdown()
    assert stream.wait().finish_reason == "cancelled"
    lease.release()


def test_register_takes_log_prompts(registry):
    registry.register("logged", "smollm2", kv_cache_tokens=512, threads=1, log_prompts=True)
    assert "logged" in registry.names()


def test_describe_reads_the_gguf_without_loading(registry):
    described = registry.describe("small")
    assert registry.loaded() == [], "describing loaded nothing"
    assert (described.architecture, described.context_length, described.quantization) == ("llama", 256, "Q4_1")
    assert "<|im_start|>" in described.chat_template and described.parameter_count > 100_000_000
    assert registry.describe("minilm") is None
    with pytest.raises(ModelNotFoundError):
        registry.describe("gpt-4")
    with registry.get("small") as small:
        info = small.engine.model_info
        assert (info.context_length, info.chat_template, info.parameter_count) == \
            (described.context_length, described.chat_template, described.parameter_count)
