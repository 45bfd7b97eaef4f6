"""A client that goes away while its plain (non-streaming) request runs cancels it in the engine.

A plain response only starts once the engine is done, so nothing is written to the client
meanwhile and no write can fail: the server must watch the connection itself. For every route
that waits on the engine, the client sends a long request on a raw socket, waits until the
engine runs it, and closes the socket. Then `/metrics` must count exactly its engine requests
as cancelled, nothing may run or wait, and every KV block must be free; the request must have
generated far fewer tokens than it asked for (it did not run to its end). The same holds for
the `openai` client giving up on a timeout, and for each of its retries.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from conftest import API_KEY, AUTH, wait_for_metrics

MODEL = "smollm2"
#: Far more tokens than the test takes to run: the request is surely still generating when the
#: client leaves, and if it was not cancelled it would still be running at the check.
LONG_MAX_TOKENS = 3000
#: A raw prompt greedy decoding continues for thousands of tokens without an end of text.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
CHAT = [{"role": "user", "content": "Repeat the word hello 3000 times."}]
#: Hang guard only: the cancel happens within a step of the disconnect.
SETTLE_TIMEOUT_S = 30.0

CASES = {
    "chat-completions": ("/v1/chat/completions",
                         {"model": MODEL, "messages": CHAT, "max_tokens": LONG_MAX_TOKENS, "temperature": 0}, 1),
    "completions": ("/v1/completions",
                    {"model": MODEL, "prompt": COUNTING, "max_tokens": LONG_MAX_TOKENS, "temperature": 0}, 1),
    "completions-n-2": ("/v1/completions",
                        {"model": MODEL, "prompt": COUNTING, "max_tokens": LONG_MAX_TOKENS, "temperature": 0.2,
                         "seed": 1, "n": 2}, 2),
    "completions-2-prompts-n-2": ("/v1/completions",
                                  {"model": MODEL, "prompt": [COUNTING, COUNTING + " 13,"],
                                   "max_tokens": LONG_MAX_TOKENS, "temperature": 0.2, "seed": 1, "n": 2}, 4),
    "chat-completions-n-3": ("/v1/chat/completions",
                             {"model": MODEL, "messages": CHAT, "max_tokens": LONG_MAX_TOKENS,
                              "temperature": 0.2, "seed": 1, "n": 3}, 3),
    "ollama-generate": ("/api/generate",
                        {"model": MODEL, "prompt": COUNTING, "raw": True, "stream": False,
                         "options": {"temperature": 0, "num_predict": LONG_MAX_TOKENS}}, 1),
    "ollama-chat": ("/api/chat",
                    {"model": MODEL, "messages": CHAT, "stream": False,
                     "options": {"temperature": 0, "num_predict": LONG_MAX_TOKENS}}, 1),
}


def send_raw(url: str, path: str, body: dict) -> socket.socket:
    """Sends one HTTP/1.1 POST on a fresh socket and returns the socket, unread."""
    address = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    connection = socket.create_connection((address.hostname, address.port))
    connection.sendall(head + payload)
    return connection


def wait_for(server, condition, what: str) -> dict[str, float]:
    return wait_for_metrics(server, condition, what, SETTLE_TIMEOUT_S)


def idle(metrics: dict[str, float]) -> bool:
    return metrics["cortexstream_running"] == 0 and metrics["cortexstream_queue_depth"] == 0 \
        and metrics["cortexstream_kv_blocks_free"] == metrics["cortexstream_kv_blocks_total"]


def assert_cancelled(server, before: dict[str, float], engine_requests: int) -> None:
    after = wait_for(server, lambda m: idle(m) and m["cortexstream_requests_cancelled_total"]
                     >= before["cortexstream_requests_cancelled_total"] + engine_requests,
                     f"{engine_requests} cancellation(s) and an idle engine")
    assert after["cortexstream_requests_cancelled_total"] == \
        before["cortexstream_requests_cancelled_total"] + engine_requests
    generated = after["cortexstream_generated_tokens_total"] - before["cortexstream_generated_tokens_total"]
    assert generated < engine_requests * LONG_MAX_TOKENS / 2, "the requests ran on after the client left"
    assert after["cortexstream_requests_failed_total"] == before["cortexstream_requests_failed_total"]
    # The abandoned wait is cleaned up, not left for asyncio to report.
    assert "never retrieved" not in server.log()


@pytest.mark.parametrize("case", list(CASES))
def test_closing_the_socket_cancels_a_plain_request(server, case):
    path, body, engine_requests = CASES[case]
    before = wait_for(server, idle, "an idle engine before the test")
    connection = send_raw(server.url, path, body)
    try:
        # Running and generating: past submission and prefill, so the cancel hits a decoding request.
        wait_for(server, lambda m: m["cortexstream_running"] == engine_requests
                 and m["cortexstream_generated_tokens_total"] > before["cortexstream_generated_tokens_total"],
                 f"{engine_requests} running request(s)")
    finally:
        connection.close()
    assert_cancelled(server, before, engine_requests)


@pytest.mark.parametrize("retries", [0, 2])
def test_the_openai_client_timing_out_cancels_every_attempt(server, retries):
    before = wait_for(server, idle, "an idle engine before the test")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=retries, timeout=1.5)
    with pytest.raises(openai.APITimeoutError):
        client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=LONG_MAX_TOKENS, temperature=0)
    assert_cancelled(server, before, retries + 1)


def test_plain_requests_on_a_kept_alive_connection_are_answered_and_not_cancelled(server):
    # The watch reads the same channel as the server: it must neither end a request whose client
    # is still there nor spoil the connection for the next request on it.
    before = server.metrics()["cortexstream_requests_cancelled_total"]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        for _ in range(3):
            response = client.post("/v1/completions", json={"model": MODEL, "prompt": "The quick brown fox",
                                                             "max_tokens": 6, "temperature": 0})
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["text"] == " with a quick brown bear."
    assert server.metrics()["cortexstream_requests_cancelled_total"] == before
