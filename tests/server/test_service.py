"""Health, metrics, API keys, concurrency and cancellation on client disconnect."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import ollama
import openai
import pytest
from conftest import AUTH, start_server, stop_server, wait_for_health

MODEL = "smollm2"


def wait_for_metrics(server, condition, timeout_s: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = server.metrics()
        if condition(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.05)


def test_health_needs_no_key_but_everything_else_does(server):
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}

    missing = httpx.get(f"{server.url}/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(ollama.ResponseError) as rejected:
        ollama.Client(host=server.url, headers={"Authorization": "Bearer wrong"}).list()
    assert rejected.value.status_code == 401
    assert httpx.get(f"{server.url}/metrics").status_code == 401


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/no/such/route"])
def test_docs_and_schema_need_the_key_too(server, path):
    # Every endpoint but /health: the schema lists every route and field a caller could probe.
    assert httpx.get(f"{server.url}{path}").status_code == 401
    if path != "/no/such/route":
        assert httpx.get(f"{server.url}{path}", headers=AUTH).status_code == 200


def read_response(connection: socket.socket) -> str:
    """The whole HTTP response: one `recv` may end after the head, before the body arrives."""
    data = b""
    while True:
        head, separator, body = data.partition(b"\r\n\r\n")
        if separator:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                return data.decode(errors="replace")
        chunk = connection.recv(65536)
        if not chunk:
            return data.decode(errors="replace")
        data += chunk


@pytest.mark.parametrize("path", ["/v1/completions", "/api/generate"])
def test_a_request_without_the_key_is_refused_before_its_body_is_read(server, path):
    # The client announces a 16 MiB body and sends 100 bytes of it. Checked first, the key is
    # missing and the answer comes at once; checked after the body, the server would wait for
    # the other 16 MiB that never come (the socket timeout is only a hang guard).
    address = httpx.URL(server.url)
    head = (f"POST {path} HTTP/1.1\r\nHost: {address.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {16 * 1024 * 1024}\r\n\r\n").encode()
    with socket.create_connection((address.host, address.port), timeout=30) as connection:
        connection.sendall(head + b'{"model": "smollm2", "prompt": "' + b"a" * 67)
        answer = read_response(connection)
    status_line, _, rest = answer.partition("\r\n")
    assert status_line.split()[1] == "401", answer
    body = json.loads(rest.partition("\r\n\r\n")[2])
    # In the shape of the API called: OpenAI's object on /v1, Ollama's string on /api.
    assert body["error"]["code"] == "invalid_api_key" if path.startswith("/v1") else set(body) == {"error"}


def test_health_is_503_until_a_model_is_served():
    broken = start_server("--model", "/nonexistent/model.gguf")
    try:
        health = wait_for_health(broken, lambda r: r.json().get("status") == "error", timeout_s=60)
        assert health.status_code == 503
        assert "/nonexistent/model.gguf" in health.json()["error"]
        models = httpx.get(f"{broken.url}/v1/models")
        assert models.status_code == 503
        assert models.json()["error"]["code"] == "model_load_error"
    finally:
        stop_server(broken)


def test_metrics_count_requests_and_tokens_in_prometheus_format(server, openai_client):
    finished, generated, ttft_count = ("cortexstream_requests_finished_total", "cortexstream_generated_tokens_total",
                                       "cortexstream_time_to_first_token_seconds_count")
    before = server.metrics()
    result = openai_client.completions.create(model=MODEL, prompt="One, two,", max_tokens=5, temperature=0)
    after = wait_for_metrics(server, lambda m: m[finished] > before[finished])
    assert after["cortexstream_ready"] == 1
    assert after[finished] == before[finished] + 1
    assert after[generated] >= before[generated] + result.usage.completion_tokens
    assert after[ttft_count] == before[ttft_count] + 1
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    assert "# TYPE cortexstream_per_token_seconds histogram" in text
    assert 'cortexstream_time_to_first_token_seconds_bucket{le="+Inf",model="smollm2"}' in text
    assert "# TYPE cortexstream_queue_depth gauge" in text
    assert "# TYPE cortexstream_step_token_budget gauge" in text
    assert after["cortexstream_step_token_budget"] > 0


def test_prompt_token_counters_add_up_over_repeats_and_choices(server, openai_client):
    # Each prompt token is counted once, as a prefix-cache hit or as prefill (the REST server
    # fans n out into n engine requests; the repeat is served from the cache).
    names = ("prompt_tokens", "prefill_tokens", "prefix_cache_hit_tokens", "recomputed_tokens", "requests_finished")
    prompt, prefill, hits, recomputed, finished = (f"cortexstream_{name}_total" for name in names)
    before = server.metrics()
    text = "You are a careful assistant who counts things. " * 8 + "Count to three:"
    for _ in range(2):
        openai_client.completions.create(model=MODEL, prompt=text, max_tokens=3, temperature=0.7, seed=1, n=2)
    after = wait_for_metrics(server, lambda m: m[finished] >= before[finished] + 4)
    moved = {name: after[name] - before[name] for name in (prompt, prefill, hits, recomputed)}
    assert moved[hits] > 0, moved
    assert moved[hits] + moved[prefill] == moved[prompt], moved
    assert moved[recomputed] == 0, moved


def test_sixteen_concurrent_streams_all_finish_batched_together(server):
    async def one_stream(client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Tell me about the number {i}."}],
            max_tokens=48, temperature=0.7, seed=i, stream=True, extra_body={"ignore_eos": True})
        text, finish_reason = "", None
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            finish_reason = chunk.choices[0].finish_reason or finish_reason
        return text, finish_reason

    async def all_streams():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=AUTH["Authorization"][7:],
                                      max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(one_stream(client, i) for i in range(16)))

    before = server.metrics()
    results = asyncio.run(all_streams())
    after = server.metrics()
    assert len(results) == 16
    assert all(text and finish_reason in ("stop", "length") for text, finish_reason in results)
    assert after["cortexstream_running"] == 0
    # Continuous batching: the streams shared forward steps, so far fewer steps than tokens ran.
    # 48 tokens each: the streams overlap for most of their lives even when a loaded machine
    # spreads their arrival over many steps (with 12 they often did not, at load 13-20).
    steps = after["cortexstream_steps_total"] - before["cortexstream_steps_total"]
    tokens = after["cortexstream_generated_tokens_total"] - before["cortexstream_generated_tokens_total"]
    assert steps < tokens / 4


def test_client_disconnect_cancels_the_request(server):
    before = server.metrics()["cortexstream_requests_cancelled_total"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 500, "temperature": 0.8, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{server.url}/v1/chat/completions", headers=AUTH, json=body) as response:
            assert response.status_code == 200
            events = response.iter_lines()
            received = [line for line in (next(events) for _ in range(8)) if line.startswith("data: ")]
            assert len(received) == 4  # the role chunk and three content chunks, before hanging up

    metrics = wait_for_metrics(server, lambda m: m["cortexstream_requests_cancelled_total"] > before
                               and m["cortexstream_running"] == 0)
    assert metrics["cortexstream_requests_cancelled_total"] == before + 1
    assert metrics["cortexstream_running"] == 0
