"""A client that leaves mid-stream cancels its request in the engine of the replica serving it:
the gateway's stream is cancelled, the replica's app sees the disconnect, and that replica's
metrics count the cancel with nothing left running."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import AUTH, PIN_HEADER, wait_until

MODEL = "smollm2"
#: Far more tokens than the test takes: a request that was not cancelled would still run.
LONG_MAX_TOKENS = 3000
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"

CASES = {
    "openai-stream": ("/v1/completions", {"model": MODEL, "prompt": COUNTING, "max_tokens": LONG_MAX_TOKENS,
                                          "temperature": 0, "stream": True}),
    "ollama-stream": ("/api/generate", {"model": MODEL, "prompt": COUNTING, "raw": True, "stream": True,
                                        "options": {"temperature": 0, "num_predict": LONG_MAX_TOKENS}}),
    "openai-plain": ("/v1/completions", {"model": MODEL, "prompt": COUNTING, "max_tokens": LONG_MAX_TOKENS,
                                         "temperature": 0}),
}


def send_raw(url: str, path: str, body: dict) -> socket.socket:
    """Sends one HTTP/1.1 POST on a fresh socket and returns the socket, unread."""
    address = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: {AUTH['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    connection = socket.create_connection((address.hostname, address.port))
    connection.sendall(head + payload)
    return connection


def idle(metrics: dict[str, float]) -> bool:
    return metrics["cortexstream_running"] == 0 and metrics["cortexstream_queue_depth"] == 0


@pytest.mark.parametrize("path,body", CASES.values(), ids=CASES.keys())
def test_a_client_leaving_cancels_in_the_replicas_engine(cluster, path, body):
    replicas = cluster.replica_ids()
    wait_until(lambda: all(idle(cluster.metrics(r)) for r in replicas), "idle replicas")
    before = {r: cluster.metrics(r) for r in replicas}

    if body.get("stream"):
        with httpx.Client(timeout=120) as client, client.stream("POST", f"{cluster.url}{path}", headers=AUTH,
                                                               json=body) as response:
            assert response.status_code == 200
            replica = response.headers[PIN_HEADER]
            first = next(response.iter_lines())
            assert "error" not in json.loads(first.removeprefix("data: "))
    else:
        # A plain answer only starts once the engine is done: leave while it generates.
        with send_raw(cluster.url, path, body):
            replica = wait_until(lambda: next((r for r in replicas if cluster.metrics(r)["cortexstream_running"] > 0),
                                              None), "the request running in a replica")
    # The client has closed its connection.
    cancelled = "cortexstream_requests_cancelled_total"
    after = wait_until(lambda: (m := cluster.metrics(replica)) and idle(m)
                       and m[cancelled] == before[replica][cancelled] + 1 and m, "the cancel in the replica's engine")
    assert after["cortexstream_generated_tokens_total"] - before[replica]["cortexstream_generated_tokens_total"] \
        < LONG_MAX_TOKENS // 2
    for other in set(replicas) - {replica}:
        assert cluster.metrics(other)[cancelled] == before[other][cancelled]
