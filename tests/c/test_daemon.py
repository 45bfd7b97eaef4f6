"""The C++ daemon (examples/cpp/daemon.cpp) as a client sees it, standard library only.

    python tests/c/test_daemon.py DAEMON MODEL.gguf

Starts the daemon on a free port, checks /health, a whole and a streamed completion (the same
greedy text), bad requests (400 naming the field), then streams a long completion, drops the
connection after a few chunks and waits for the daemon's /metrics to count the request as
cancelled, with nothing left running. Finally SIGTERM must stop it cleanly (exit status 0;
under AddressSanitizer a leak would make it non-zero).
"""

import http.client
import json
import select
import signal
import socket
import subprocess
import sys
import time

# Hang guards only: nothing here measures speed.
STARTUP_SECONDS = 120
CANCEL_SECONDS = 60


def start(daemon, model):
    process = subprocess.Popen(
        [daemon, "--model", model, "--port", "0"], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    ready, _, _ = select.select([process.stdout], [], [], STARTUP_SECONDS)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("listening on http://"):
        process.kill()
        raise AssertionError(f"the daemon did not start: {line!r}")
    host, port = line.strip().removeprefix("listening on http://").rsplit(":", 1)
    return process, host, int(port)


def request(address, method, path, body=None):
    connection = http.client.HTTPConnection(*address, timeout=STARTUP_SECONDS)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def sse_texts(address, body):
    """The text of every chunk of a streamed completion, and the finish_reason of the last."""
    connection = http.client.HTTPConnection(*address, timeout=STARTUP_SECONDS)
    connection.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}))
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    texts, finish_reason = [], None
    for line in response.read().decode().split("\n\n"):
        if not line:
            continue
        assert line.startswith("data: "), line
        if line == "data: [DONE]":
            break
        choice = json.loads(line.removeprefix("data: "))["choices"][0]
        texts.append(choice["text"])
        finish_reason = choice["finish_reason"] or finish_reason
    connection.close()
    return texts, finish_reason


def check_completions(address):
    body = {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    status, whole = request(address, "POST", "/v1/completions", body)
    assert status == 200, whole
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 8
    texts, finish_reason = sse_texts(address, body)
    assert "".join(texts) == whole["choices"][0]["text"]
    assert finish_reason == "length"
    assert whole["choices"][0]["stop_reason"] is None

    # vLLM's stop_reason: the stop string that ended the completion ("quick" completes first).
    status, stopped = request(address, "POST", "/v1/completions", {**body, "max_tokens": 24, "stop": ["bear", "quick"]})
    assert status == 200, stopped
    assert (stopped["choices"][0]["finish_reason"], stopped["choices"][0]["stop_reason"]) == ("stop", "quick")


def check_bad_requests(address):
    for body, param in [
        ({"prompt": "x", "max_tokens": "8"}, "max_tokens"),  # the daemon's type check
        ({"prompt": "x", "temperature": -1}, "temperature"),  # the library's range check
        ({"max_tokens": 8}, "prompt"),
        ({"prompt": "a\u0000b"}, "prompt"),  # the C API would see only "a"
        ({"prompt": "x", "stop": ["ok", "\u0000"]}, "stop"),
    ]:
        status, error = request(address, "POST", "/v1/completions", body)
        assert status == 400, (body, status, error)
        assert error["error"]["param"] == param, (body, error)


def check_disconnect_cancels(address):
    before = request(address, "GET", "/metrics")[1]
    body = {"prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0, "ignore_eos": True, "stream": True}
    payload = json.dumps(body).encode()
    client = socket.create_connection(address, timeout=STARTUP_SECONDS)
    client.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while received.count(b"data: ") < 3:
        chunk = client.recv(4096)
        assert chunk, f"the stream ended early: {received!r}"
        received += chunk
    client.close()

    deadline = time.monotonic() + CANCEL_SECONDS
    while True:
        metrics = request(address, "GET", "/metrics")[1]
        cancelled = metrics["requests_cancelled"] - before["requests_cancelled"]
        if cancelled == 1 and metrics["running"] == 0:
            break
        assert time.monotonic() < deadline, f"the dropped stream was not cancelled: {metrics}"
        time.sleep(0.05)
    generated = metrics["generated_tokens_total"] - before["generated_tokens_total"]
    assert generated < 3000, metrics
    assert metrics["kv_blocks_free"] == metrics["kv_blocks_total"], metrics


def main(daemon, model):
    process, host, port = start(daemon, model)
    address = (host, port)
    try:
        assert request(address, "GET", "/health") == (200, {"status": "ok"})
        check_completions(address)
        check_bad_requests(address)
        check_disconnect_cancels(address)
        print("daemon: completions, SSE, bad requests and cancel on disconnect ok")
    except BaseException:
        process.kill()
        raise
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=STARTUP_SECONDS)
    print(process.stdout.read().strip())
    assert status == 0, f"the daemon exited with status {status}"


if __name__ == "__main__":
    main(*sys.argv[1:])
