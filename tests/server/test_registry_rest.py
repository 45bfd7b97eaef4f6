"""The REST server on the model registry, driven by the official `openai` and `ollama` clients:
SmolLM2 under two names with different settings plus MiniLM, requests to each interleaved;
keep-alive (the server's, a request's, `0`, negative) and LRU unloading under a memory budget
observed through `/api/ps`; requests racing an unload or a disconnect; 404/400 shapes of both
APIs; `/metrics` per model.

Waiting for an unload polls `/api/ps` with a hang guard (`until`); nothing sleeps in place of work.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from conftest import REPO, STARTUP_TIMEOUT_S, RunningServer, free_port, stop_server, wait_for_health

#: Small engines: one thread and a 1024-token KV cache each.
ENGINE = {"threads": 1, "kv_cache_tokens": 1024, "max_running": 4}
SHORT_CONTEXT = 256
SHOWN_CONTEXT = 300
GREEDY = {"temperature": 0, "seed": 3}
HANG_GUARD_S = 60


def start_entries_server(spec: dict) -> RunningServer:
    """The server on `spec` (see entries_server.py), once healthy."""
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="cortexstream-registry-", suffix=".log")[1])
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("entries_server.py")), str(port),
                                    json.dumps(spec)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_for_health(server, lambda r: r.status_code == 200, STARTUP_TIMEOUT_S)
    except BaseException:
        stop_server(server)
        raise
    return server


def until(condition, what: str):
    """Polls `condition()` until it returns something truthy (returned); fails naming `what`
    after the hang guard."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} never happened")
        time.sleep(0.05)


def loaded(server: RunningServer) -> dict[str, dict]:
    """/api/ps by model name (without `:latest`)."""
    models = httpx.get(f"{server.url}/api/ps", timeout=30).json()["models"]
    return {m["model"].removesuffix(":latest"): m for m in models}


@pytest.fixture(scope="module")
def server():
    spec = {"models": [
        {"name": "smollm2", "source": "smollm2", "engine": ENGINE},
        {"name": "short", "source": "smollm2", "engine": {**ENGINE, "context_length": SHORT_CONTEXT},
         "keep_alive": "1h"},
        {"name": "minilm", "source": "minilm", "embedding": True, "engine": {"threads": 1}},
        # Only ever shown: /api/show must not load it.
        {"name": "shown-only", "source": "smollm2", "engine": {**ENGINE, "context_length": SHOWN_CONTEXT}},
    ]}
    running = start_entries_server(spec)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def ollama_client(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def test_every_registered_model_is_listed_and_only_the_first_is_loaded_at_start(server, openai_client,
                                                                                ollama_client):
    assert [m.id for m in openai_client.models.list().data] == ["smollm2", "short", "minilm", "shown-only"]
    assert {m.model for m in ollama_client.list().models} == {"smollm2:latest", "short:latest", "minilm:latest",
                                                              "shown-only:latest"}
    assert openai_client.models.retrieve("short").id == "short"
    running = {m.model for m in ollama_client.ps().models}
    assert "smollm2:latest" in running, running
    assert all(ollama_client.show(name).capabilities for name in ("smollm2", "short", "all-minilm"))


def test_show_fills_what_the_gguf_says_for_every_model(ollama_client):
    for name, context in (("smollm2", ENGINE["kv_cache_tokens"]), ("short:latest", SHORT_CONTEXT)):
        shown = ollama_client.show(name)
        assert shown.details.quantization_level == "Q4_1"
        assert shown.details.parameter_size.endswith("M") and 100 < float(shown.details.parameter_size[:-1]) < 200
        assert shown.details.family == "llama" and shown.details.format == "gguf"
        assert "<|im_start|>" in shown.template
        assert shown.parameters == f"num_ctx {context}"
        assert shown.modelinfo["llama.context_length"] == context
        assert shown.modelinfo["general.parameter_count"] > 100_000_000
        assert shown.capabilities == ["completion"]
    embedding = ollama_client.show("all-minilm")
    assert embedding.capabilities == ["embedding"] and embedding.details.family == "bert"


def test_show_answers_from_the_gguf_without_loading_the_model(server, ollama_client):
    shown = ollama_client.show("shown-only")
    assert "shown-only" not in loaded(server), "/api/show loaded the model"
    # What a loaded engine would say: its served context, the GGUF's template and quantization.
    assert shown.parameters == f"num_ctx {SHOWN_CONTEXT}"
    assert shown.modelinfo["llama.context_length"] == SHOWN_CONTEXT
    assert shown.modelinfo["general.parameter_count"] > 100_000_000
    assert shown.details.quantization_level == "Q4_1" and shown.details.family == "llama"
    assert "<|im_start|>" in shown.template and shown.capabilities == ["completion"]
    with pytest.raises(ollama.ResponseError) as unknown:
        ollama_client.show("gpt-4")
    assert unknown.value.status_code == 404


def test_interleaved_requests_reach_the_model_they_name(server, openai_client, ollama_client):
    prompt = "The capital of France is"
    texts = []
    for _ in range(2):
        texts.append(openai_client.completions.create(model="smollm2", prompt=prompt, max_tokens=6,
                                                      **GREEDY).choices[0].text)
        texts.append(ollama_client.generate(model="short:latest", prompt=prompt, raw=True,
                                            options={**GREEDY, "num_predict": 6}).response)
        vector = ollama_client.embed(model="all-minilm", input=prompt).embeddings[0]
        assert len(vector) == 384
        streamed = openai_client.chat.completions.create(model="short", messages=[{"role": "user", "content": "Hi"}],
                                                         max_tokens=4, stream=True, **GREEDY)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        texts.append(openai_client.embeddings.create(model="minilm", input=prompt).data[0].embedding[:4])
    # Same weights, greedy: both names give the same text.
    assert texts[0] == texts[1] == texts[3] == texts[4]
    running = {m.model: m for m in ollama_client.ps().models}
    assert set(running) == {"smollm2:latest", "short:latest", "minilm:latest"}
    # Each name is its own engine with its own settings.
    assert running["short:latest"].context_length == SHORT_CONTEXT
    assert running["smollm2:latest"].context_length == ENGINE["kv_cache_tokens"]
    assert all(m.size > 50_000_000 and m.size_vram == 0 for m in running.values())


def test_each_models_settings_hold(openai_client):
    # Past the short model's context, within the other's.
    long_prompt = " ".join(["word"] * (SHORT_CONTEXT + 40))
    with pytest.raises(openai.BadRequestError) as too_long:
        openai_client.completions.create(model="short", prompt=long_prompt, max_tokens=2)
    assert too_long.value.status_code == 400
    answered = openai_client.completions.create(model="smollm2", prompt=long_prompt, max_tokens=2)
    assert answered.usage.prompt_tokens > SHORT_CONTEXT


def test_metrics_have_one_series_per_loaded_model(server, openai_client):
    openai_client.completions.create(model="short", prompt="Hi", max_tokens=2)
    samples = server.labelled_metrics()
    submitted = {dict(labels)["model"]: value for (name, labels), value in samples.items()
                 if name == "cortexstream_requests_submitted_total"}
    assert {"smollm2", "short"} <= set(submitted), submitted
    assert submitted["short"] >= 1
    assert samples[("cortexstream_ready", frozenset())] == 1


def test_embeddings_are_counted_per_model_in_metrics(server, openai_client, ollama_client):
    minilm = frozenset({("model", "minilm")})

    def counted() -> tuple[float, float]:
        samples = server.labelled_metrics()
        return (samples[("cortexstream_embedding_requests_total", minilm)],
                samples[("cortexstream_embedding_tokens_total", minilm)])

    ollama_client.embed(model="all-minilm", input="loaded, so its series exist")
    requests, tokens = counted()
    openai_tokens = openai_client.embeddings.create(model="minilm", input=["one", "two three"]).usage.prompt_tokens
    ollama_tokens = ollama_client.embed(model="all-minilm", input="four five six").prompt_eval_count
    assert counted() == (requests + 2, tokens + openai_tokens + ollama_tokens)
    # Ollama's older route answers no token count; its call counts all the same.
    ollama_client.embeddings(model="minilm", prompt="seven")
    assert counted()[0] == requests + 3
    assert "# TYPE cortexstream_embedding_tokens_total counter" in server.metrics_text()


def test_unknown_model_is_404_in_each_apis_shape(server, openai_client, ollama_client):
    with pytest.raises(openai.NotFoundError) as chat:
        openai_client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert chat.value.body["code"] == "model_not_found" and "gpt-4" in chat.value.body["message"]
    with pytest.raises(openai.NotFoundError) as embedding:
        openai_client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert "text-embedding-3-small" in embedding.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("gpt-4")
    for call in (lambda: ollama_client.generate(model="llama3", prompt="hi"),
                 lambda: ollama_client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}]),
                 lambda: ollama_client.embed(model="llama3", input="hi"),
                 lambda: ollama_client.show("llama3")):
        with pytest.raises(ollama.ResponseError) as unknown:
            call()
        assert unknown.value.status_code == 404 and "llama3" in unknown.value.error
    body = httpx.post(f"{server.url}/api/generate", json={"model": "llama3", "prompt": "hi"}).json()
    assert set(body) == {"error"} and isinstance(body["error"], str)


def test_a_model_asked_for_what_it_cannot_do_is_400(openai_client, ollama_client):
    with pytest.raises(openai.BadRequestError) as generate:
        openai_client.completions.create(model="minilm", prompt="hi", max_tokens=2)
    assert generate.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        openai_client.embeddings.create(model="smollm2", input="hi")
    with pytest.raises(ollama.ResponseError) as embed:
        ollama_client.embed(model="short", input="hi")
    assert embed.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as chat:
        ollama_client.chat(model="all-minilm", messages=[{"role": "user", "content": "hi"}])
    assert chat.value.status_code == 400


def test_empty_generate_loads_and_with_keep_alive_0_unloads(server, ollama_client):
    loaded_now = ollama_client.generate(model="short")
    assert loaded_now.done and loaded_now.done_reason == "load"
    assert "short" in loaded(server)
    unloaded = ollama_client.generate(model="short", keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload" and unloaded.response == ""
    assert "short" not in loaded(server)
    # The chat way to preload.
    assert ollama_client.chat(model="short", messages=[]).done_reason == "load"
    assert "short" in loaded(server)


def test_keep_alive_of_a_request_sets_the_expiry_ps_reports(server, ollama_client):
    now = datetime.now(UTC)
    ollama_client.generate(model="short", prompt="Hi", options={"num_predict": 1}, keep_alive="2h")
    expires = {m.model: m.expires_at for m in ollama_client.ps().models}["short:latest"]
    assert now + timedelta(minutes=110) < expires < now + timedelta(minutes=130), expires
    ollama_client.embed(model="minilm", input="hi", keep_alive=-1)
    forever = {m.model: m.expires_at for m in ollama_client.ps().models}["minilm:latest"]
    assert forever.year > 2200, forever
    # A short keep-alive: the model unloads by itself once idle.
    ollama_client.generate(model="short", prompt="Hi", options={"num_predict": 1}, keep_alive="1s")
    until(lambda: "short" not in loaded(server), "the unload of `short` 1 s after its request")
    assert "minilm" in loaded(server)


def test_keep_alive_0_unloads_after_the_request_and_bad_values_are_400(server, ollama_client):
    answer = ollama_client.generate(model="short", prompt="Hi", options={"num_predict": 2}, keep_alive=0)
    assert answer.eval_count == 2
    until(lambda: "short" not in loaded(server), "the unload of `short` after its keep_alive 0 request")
    for bad in ("5 parsecs", "later"):
        with pytest.raises(ollama.ResponseError) as invalid:
            ollama_client.generate(model="short", prompt="Hi", keep_alive=bad)
        assert invalid.value.status_code == 400 and "keep_alive" in invalid.value.error
    response = httpx.post(f"{server.url}/api/embed", json={"model": "minilm", "input": "hi", "keep_alive": True})
    assert response.status_code == 400 and "keep_alive" in response.json()["error"]


def test_a_refused_request_loads_no_model(server, openai_client, ollama_client):
    ollama_client.generate(model="short", keep_alive=0)
    assert "short" not in loaded(server)
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.completions.create(model="short", prompt="Hi", n=1000)
    assert refused.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model="short", messages=[{"role": "user", "content": "hi"}], n=0)
    assert "short" not in loaded(server)


def test_a_stream_racing_an_unload_is_served_to_its_end(server, ollama_client):
    stream = ollama_client.generate(model="short", prompt="Tell me a long story about a dragon.", stream=True,
                                    options={**GREEDY, "num_predict": 48}, keep_alive="1h")
    first = next(stream)
    assert not first.done
    # Unloaded while the stream runs: the stream's lease keeps its engine.
    assert ollama_client.generate(model="short", keep_alive=0).done_reason == "unload"
    assert "short" not in loaded(server)
    *_, last = stream
    assert last.done and last.done_reason == "length" and last.eval_count == 48
    # The next request loads it again.
    assert ollama_client.generate(model="short", prompt="Hi", options={"num_predict": 1}).eval_count == 1
    assert "short" in loaded(server)


def test_a_disconnected_stream_releases_its_model(server):
    # keep_alive 0: the model unloads as soon as its last lease ends, so its unload shows the
    # lease of the abandoned stream was released.
    # Counting (raw, greedy) runs to num_predict rather than to an end of text.
    body = {"model": "short", "prompt": "1, 2, 3, 4, 5, 6,", "raw": True, "keep_alive": 0,
            "options": {**GREEDY, "num_predict": SHORT_CONTEXT - 40}}
    with httpx.stream("POST", f"{server.url}/api/generate", json=body, timeout=60) as response:
        assert response.status_code == 200
        # Kept: a dropped line iterator would close the response (disconnect) at once.
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False
        assert "short" in loaded(server)
    until(lambda: "short" not in loaded(server), "the release of the disconnected stream's lease")


@pytest.fixture(scope="module")
def budget_server(server):
    """Two SmolLM2 names under a budget that holds one of their engines (measured on `server`)."""
    ollama.Client(host=server.url).generate(model="smollm2", prompt="Hi", options={"num_predict": 1})
    one_engine = loaded(server)["smollm2"]["size"]
    entries = [{"name": name, "source": "smollm2", "engine": ENGINE} for name in ("first", "second")]
    running = start_entries_server({"models": entries, "memory_budget_bytes": one_engine * 3 // 2})
    yield running
    stop_server(running)


def test_a_memory_budget_unloads_the_least_recently_used_idle_model(budget_server):
    client = ollama.Client(host=budget_server.url, timeout=120)
    assert set(loaded(budget_server)) == {"first"}
    client.generate(model="second", prompt="Hi", options={"num_predict": 1})
    assert set(loaded(budget_server)) == {"second"}, "first was idle and least recently used"
    client.generate(model="first", prompt="Hi", options={"num_predict": 1})
    assert set(loaded(budget_server)) == {"first"}

    # A model in use is never unloaded for room: its stream finishes, both stay loaded meanwhile.
    # Counting runs to num_predict, far longer than loading the other model takes.
    stream = client.generate(model="first", prompt="1, 2, 3, 4, 5, 6,", raw=True, stream=True,
                             options={**GREEDY, "num_predict": 400})
    assert not next(stream).done
    assert client.generate(model="second", prompt="Hi", options={"num_predict": 1}).eval_count == 1
    assert set(loaded(budget_server)) == {"first", "second"}
    *_, last = stream
    assert last.done and last.eval_count == 400
