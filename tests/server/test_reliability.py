"""Health while loading and the overload policy, on a real server with one running slot and a
queue of one (`--max-running 1 --max-queue 1`)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest
from conftest import AUTH, STARTUP_TIMEOUT_S, start_server, stop_server, wait_for_metrics

CANARY = {"model": "smollm2", "prompt": "The quick brown fox", "temperature": 0, "max_tokens": 6}
CANARY_TEXT = " with a quick brown bear."
#: A request that keeps its slot for seconds: hundreds of tokens of a story.
LONG = {"model": "smollm2", "prompt": "Once upon a time, in a land far away,", "temperature": 0,
        "max_tokens": 400, "stream": True}


class HealthLog:
    """Every /health answer from the moment the port opened until the model was ready."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict, str | None]] = []
        self.refused_after_open = 0


def watch_startup(server, timeout_s: float) -> HealthLog:
    log = HealthLog()
    deadline = time.monotonic() + timeout_s
    opened = False
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            response = httpx.get(f"{server.url}/health", timeout=5)
        except httpx.ConnectError:
            log.refused_after_open += opened
            time.sleep(0.005)
            continue
        opened = True
        log.answers.append((response.status_code, response.json(), response.headers.get("retry-after")))
        if response.status_code == 200:
            return log
        # While loading, model endpoints say so too.
        models = httpx.get(f"{server.url}/v1/models", headers=AUTH)
        if models.status_code == 503 and models.json()["error"]["code"] == "loading":
            log.answers.append((503, {"models": "loading"}, models.headers.get("retry-after")))
    pytest.fail(f"not ready within {timeout_s}s:\n{server.log()}")


@pytest.fixture(scope="module")
def tiny_server():
    server = start_server("--api-key", AUTH["Authorization"][7:], "--embedding-model", "none",
                          "--max-running", "1", "--max-queue", "1")
    try:
        server.startup = watch_startup(server, STARTUP_TIMEOUT_S)
        yield server
    finally:
        stop_server(server)


def test_health_is_503_while_loading_and_never_refused_once_listening(tiny_server):
    # The model loads in a thread after the port opens (about 1.5 s here), so a client that
    # polls from the start sees "loading" answers, then "ok": never a refused connection.
    log = tiny_server.startup
    statuses = [status for status, _, _ in log.answers]
    print(f"\nhealth while loading: {statuses.count(503)} answers 503, then 200; "
          f"{log.refused_after_open} refused after the port opened")
    assert log.refused_after_open == 0
    assert statuses[-1] == 200 and log.answers[-1][1] == {"status": "ok"}
    assert 503 in statuses, "the model loaded before the port opened: loading is not in the background"
    for status, body, retry_after in log.answers[:-1]:
        assert status == 503
        assert body in ({"status": "loading"}, {"models": "loading"})
        assert retry_after is not None and int(retry_after) >= 1



def test_past_the_queue_limit_the_server_answers_503_with_retry_after(tiny_server):
    server = tiny_server
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=LONG) as running:
            assert running.status_code == 200
            wait_for_metrics(server, lambda m: m["cortexstream_running"] == 1)
            with client.stream("POST", "/v1/completions", json=LONG) as queued:
                assert queued.status_code == 200
                wait_for_metrics(server, lambda m: m["cortexstream_queue_depth"] == 1)
                rejected_before = server.metrics()["cortexstream_requests_rejected_total"]

                overflow = client.post("/v1/completions", json=CANARY)
                assert overflow.status_code == 503, overflow.text
                assert int(overflow.headers["retry-after"]) >= 1
                error = overflow.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["code"] == "overloaded" and "max_queue = 1" in error["message"]
                assert error["type"] == "server_error"
                # Streaming requests are refused before their stream starts, with the same answer.
                overflow_stream = client.post("/v1/chat/completions", json={
                    "model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "stream": True})
                assert overflow_stream.status_code == 503
                assert overflow_stream.json()["error"]["code"] == "overloaded"
                assert server.metrics()["cortexstream_requests_rejected_total"] == rejected_before + 2
        # Both streams closed: their requests are cancelled and the slot and queue free again.
    wait_for_metrics(server, lambda m: m["cortexstream_running"] == 0 and m["cortexstream_queue_depth"] == 0)
    served = httpx.post(f"{server.url}/v1/completions", headers=AUTH, json=CANARY, timeout=60)
    assert served.status_code == 200
    assert served.json()["choices"][0]["text"] == CANARY_TEXT


def test_n_above_the_running_slots_is_400_naming_n(tiny_server):
    response = httpx.post(f"{tiny_server.url}/v1/completions", headers=AUTH, json={**CANARY, "n": 2}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "n" and error["code"] == "invalid_request"
    assert "between 1 and 1" in error["message"]


def test_stream_of_a_queued_request_that_is_cancelled_frees_the_queue(tiny_server):
    # A client that gives up while its request still waits in the queue must not hold the slot.
    server = tiny_server
    before = server.metrics()["cortexstream_requests_cancelled_total"]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=LONG) as running:
            assert running.status_code == 200
            wait_for_metrics(server, lambda m: m["cortexstream_running"] == 1)
            with client.stream("POST", "/v1/completions", json=LONG) as queued:
                assert queued.status_code == 200
                wait_for_metrics(server, lambda m: m["cortexstream_queue_depth"] == 1)
            wait_for_metrics(server, lambda m: m["cortexstream_queue_depth"] == 0
                     and m["cortexstream_requests_cancelled_total"] == before + 1)
            first = next(line for line in running.iter_lines() if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
    wait_for_metrics(server, lambda m: m["cortexstream_running"] == 0
             and m["cortexstream_requests_cancelled_total"] == before + 2)


# --- fan-out and fairness (`--max-running 4`: one request may ask for at most 2 generations) ------

FAIR_RUNNING = 4
FAN_OUT_LIMIT = FAIR_RUNNING // 2
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
#: Long enough that none of these ends while the single request runs (tens of tokens), short
#: enough that a starved single request would still finish behind them (the test fails, not hangs).
FAN_OUT_MAX_TOKENS = 300


@pytest.fixture(scope="module")
def fair_server():
    server = start_server("--api-key", AUTH["Authorization"][7:], "--embedding-model", "none",
                          "--max-running", str(FAIR_RUNNING), "--max-queue", "16")
    try:
        watch_startup(server, STARTUP_TIMEOUT_S)
        yield server
    finally:
        stop_server(server)


def fan_out_body(prompts: int, n: int, stream: bool = True) -> dict:
    prompt = COUNTING if prompts == 1 else [COUNTING] * prompts
    return {"model": "smollm2", "prompt": prompt, "n": n, "max_tokens": FAN_OUT_MAX_TOKENS, "temperature": 0.5,
            "seed": 7, "stream": stream}


def ended_normally(metrics: dict[str, float]) -> float:
    # requests_finished counts cancelled requests too.
    return metrics["cortexstream_requests_finished_total"] - metrics["cortexstream_requests_cancelled_total"]


@pytest.mark.parametrize(("prompts", "n", "param"), [(1, 3, "n"), (3, 1, "prompt"), (2, 2, "prompt"),
                                                     (1000, 1, "prompt")])
def test_a_fan_out_past_half_the_running_slots_is_400_naming_the_limit(fair_server, prompts, n, param):
    submitted = fair_server.metrics()["cortexstream_requests_submitted_total"]
    response = httpx.post(f"{fair_server.url}/v1/completions", headers=AUTH, json=fan_out_body(prompts, n, False),
                          timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_request", error
    assert f"at most {FAN_OUT_LIMIT}" in error["message"] or f"between 1 and {FAN_OUT_LIMIT}" in error["message"]
    # Refused whole: not one of its generations reached the engine.
    assert fair_server.metrics()["cortexstream_requests_submitted_total"] == submitted


def test_a_single_request_is_served_while_the_largest_fan_out_runs(fair_server):
    server = fair_server
    before = wait_for_metrics(server, lambda m: m["cortexstream_running"] == 0 and m["cortexstream_queue_depth"] == 0)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        with client.stream("POST", "/v1/completions", json=fan_out_body(1, FAN_OUT_LIMIT)) as big:
            assert big.status_code == 200
            wait_for_metrics(server, lambda m: m["cortexstream_running"] == FAN_OUT_LIMIT)
            single = client.post("/v1/completions", json=CANARY)
            assert single.status_code == 200, single.text
            assert single.json()["choices"][0]["text"] == CANARY_TEXT
            # It ran beside the fan-out: only it has ended, every generation of the fan-out runs on.
            # (Polled: the engine's counters may trail the answer by a step.)
            during = wait_for_metrics(server, lambda m: ended_normally(m) > ended_normally(before)
                              and m["cortexstream_running"] == FAN_OUT_LIMIT)
            assert ended_normally(during) - ended_normally(before) == 1
    wait_for_metrics(server, lambda m: m["cortexstream_running"] == 0 and m["cortexstream_queue_depth"] == 0)


def test_the_extra_generations_of_a_queued_fan_out_wait_behind_a_single_request(fair_server):
    # Every slot runs a fan-out; a third fan-out and then a single request queue. When two slots
    # free up, the third fan-out's first generation and the single request take them: the fan-out's
    # second generation (engine priority -1) waits, though it arrived before the single request.
    server = fair_server
    before = wait_for_metrics(server, lambda m: m["cortexstream_running"] == 0 and m["cortexstream_queue_depth"] == 0)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client, ThreadPoolExecutor(1) as pool:
        with ExitStack() as first, ExitStack() as rest:
            first.enter_context(client.stream("POST", "/v1/completions", json=fan_out_body(1, FAN_OUT_LIMIT)))
            wait_for_metrics(server, lambda m: m["cortexstream_running"] == FAN_OUT_LIMIT)
            rest.enter_context(client.stream("POST", "/v1/completions", json=fan_out_body(1, FAN_OUT_LIMIT)))
            wait_for_metrics(server, lambda m: m["cortexstream_running"] == FAIR_RUNNING)
            rest.enter_context(client.stream("POST", "/v1/completions", json=fan_out_body(1, FAN_OUT_LIMIT)))
            wait_for_metrics(server, lambda m: m["cortexstream_queue_depth"] == FAN_OUT_LIMIT)
            single = pool.submit(client.post, "/v1/completions", json=CANARY)
            wait_for_metrics(server, lambda m: m["cortexstream_queue_depth"] == FAN_OUT_LIMIT + 1)
            first.close()  # the first fan-out's client leaves: two slots free
            answer = single.result()
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["text"] == CANARY_TEXT
            # The single request got a slot at once: no fan-out generation had to end first.
            during = wait_for_metrics(server, lambda m: ended_normally(m) > ended_normally(before))
            assert ended_normally(during) - ended_normally(before) == 1
    wait_for_metrics(server, lambda m: m["cortexstream_running"] == 0 and m["cortexstream_queue_depth"] == 0)
