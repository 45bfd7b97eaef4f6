"""Server logs of a real run (SmolLM2): JSON lines, one request id per request shared by the
server's access line and the engine's own records, `X-Request-Id` accepted and returned,
prompts never logged unless `--log-prompts`."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from conftest import serving

SECRET = "The zebra password is"


def _lines(server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def _wait_for(server, condition, what: str) -> list[dict]:
    """The log lines once `condition(lines)` holds (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + 30
    while True:
        lines = _lines(server)
        if condition(lines) or time.monotonic() > deadline:
            assert condition(lines), f"{what} never logged:\n{server.log()}"
            return lines
        time.sleep(0.05)


@pytest.fixture(scope="module")
def json_server():
    yield from serving("--log-format", "json", "--log-level", "info", "--embedding-model", "none")


def _of(lines: list[dict], request_id: str) -> list[dict]:
    return [line for line in lines if line.get("request_id") == request_id]


def test_a_requests_lines_share_its_id(json_server) -> None:
    response = httpx.post(f"{json_server.url}/v1/completions", headers={"X-Request-Id": "client-id-42"},
                          json={"model": "smollm2", "prompt": SECRET, "max_tokens": 3, "temperature": 0}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "client-id-42"

    lines = _wait_for(json_server, lambda ls: any(l["message"] == "request" for l in _of(ls, "client-id-42"))
                      and any(l["message"] == "finished" for l in _of(ls, "client-id-42")), "the request's lines")
    ours = _of(lines, "client-id-42")
    engine_lines = [line for line in ours if line["logger"] == "cortexstream.request"]
    assert [line["message"] for line in engine_lines] == ["queued", "finished"]
    assert len({line["engine_request_id"] for line in engine_lines}) == 1
    finished = engine_lines[-1]
    assert (finished["reason"], finished["completion_tokens"]) == ("length", 3)
    [access] = [line for line in ours if line["logger"] == "cortexstream.server.access"]
    assert (access["method"], access["route"], access["status"]) == ("POST", "/v1/completions", 200)
    assert access["completion_tokens"] == 3 and access["prompt_tokens"] == finished["prompt_tokens"]
    assert access["model"] and access["duration_ms"] > 0
    assert SECRET not in json_server.log()


def test_an_id_is_generated_when_absent_or_malformed_and_errors_carry_it(json_server) -> None:
    generated = httpx.get(f"{json_server.url}/v1/models", timeout=30)
    malformed = httpx.post(f"{json_server.url}/v1/completions", headers={"X-Request-Id": "bad id\twith spaces"},
                           json={"model": "smollm2", "prompt": "x", "temperature": -1}, timeout=30)
    assert malformed.status_code == 400
    ids = [generated.headers["x-request-id"], malformed.headers["x-request-id"]]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids) and "bad id" not in ids[1]
    # Wait for each id's access line itself: another line of the same request (the core's
    # `rejected` record of its refused field) is written just before it.
    has_access_line = lambda ls, i: any(line["message"] == "request" for line in _of(ls, i))  # noqa: E731
    lines = _wait_for(json_server, lambda ls: all(has_access_line(ls, i) for i in ids), "the access lines")
    assert [line["status"] for line in _of(lines, ids[1]) if line["message"] == "request"] == [400]
    assert [line["route"] for line in _of(lines, ids[0]) if line["message"] == "request"] == ["/v1/models"]


def test_streamed_requests_log_their_tokens(json_server) -> None:
    with httpx.stream("POST", f"{json_server.url}/api/generate", headers={"X-Request-Id": "ollama-7"},
                      json={"model": "smollm2", "prompt": SECRET, "options": {"num_predict": 2, "temperature": 0}},
                      timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "ollama-7"
        for _ in response.iter_lines():
            pass
    lines = _wait_for(json_server, lambda ls: any(l["message"] == "request" for l in _of(ls, "ollama-7")),
                      "the access line")
    [access] = [line for line in _of(lines, "ollama-7") if line["message"] == "request"]
    assert (access["route"], access["completion_tokens"]) == ("/api/generate", 2)
    assert any(line["message"] == "queued" for line in _of(lines, "ollama-7"))


def test_prompts_are_logged_only_with_log_prompts() -> None:
    for running in serving("--log-format", "json", "--log-level", "info", "--embedding-model", "none", "--log-prompts"):
        response = httpx.post(f"{running.url}/v1/completions", headers={"X-Request-Id": "with-prompt"},
                              json={"model": "smollm2", "prompt": SECRET, "max_tokens": 1}, timeout=60)
        assert response.status_code == 200
        lines = _wait_for(running, lambda ls: any(l["message"] == "queued" for l in _of(ls, "with-prompt")),
                          "the queued line")
        [queued] = [line for line in _of(lines, "with-prompt") if line["message"] == "queued"]
        assert queued["prompt"] == SECRET
