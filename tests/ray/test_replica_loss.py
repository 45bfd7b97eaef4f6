"""A replica killed (SIGKILL to its process) during 16 concurrent streams loses only its own
in-flight requests: they end with a clean error (the OpenAI client raises it), the streams on the
survivor finish, a plain request the victim had not answered yet gets a 503 (`replica_lost`), the
next 16 requests succeed, and Serve's replacement replica loads and serves."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
from conftest import API_KEY, AUTH, PIN_HEADER, REPLACEMENT_TIMEOUT_S, SETTLE_TIMEOUT_S, wait_until

MODEL = "smollm2"
STREAMS = 16
#: Enough tokens that streams are still generating when the replica dies (one that already
#: ended is not lost: it is counted with the survivors).
MAX_TOKENS = 400


def counting(start: int) -> str:
    """A raw prompt greedy decoding continues without an end of text; distinct per stream."""
    return ", ".join(str(n) for n in range(start, start + 12)) + ","


class Outcome:
    def __init__(self) -> None:
        self.replica: str | None = None
        self.tokens = 0
        self.finish_reason: str | None = None
        self.error: Exception | None = None
        self.started = threading.Event()
        self.ended = threading.Event()


#: Plain (non-streaming) requests, OpenAI and Ollama, long enough to be running at the kill.
PLAIN = {
    "/v1/completions": {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": MAX_TOKENS, "temperature": 0},
    "/api/generate": {"model": MODEL, "prompt": "7, 8, 9, 10, 11,", "raw": True, "stream": False,
                      "options": {"temperature": 0, "num_predict": MAX_TOKENS}},
}


def plain_request(url: str, path: str, replica: str, answer: dict) -> None:
    response = httpx.post(f"{url}{path}", headers={**AUTH, PIN_HEADER: replica}, json=PLAIN[path], timeout=120)
    is_json = response.headers.get("content-type", "").startswith("application/json")
    answer.update(status=response.status_code, body=response.json() if is_json else response.text,
                  retry_after=response.headers.get("retry-after"))


def stream_one(client: openai.OpenAI, index: int, outcome: Outcome) -> None:
    try:
        raw = client.completions.with_raw_response.create(
            model=MODEL, prompt=counting(100 * index), max_tokens=MAX_TOKENS, temperature=0, stream=True)
        outcome.replica = raw.headers[PIN_HEADER]
        for chunk in raw.parse():
            outcome.tokens += 1
            outcome.started.set()
            outcome.finish_reason = chunk.choices[0].finish_reason or outcome.finish_reason
    except Exception as error:  # noqa: BLE001 - the outcome under test
        outcome.error = error
    finally:
        outcome.started.set()
        outcome.ended.set()


def test_a_killed_replica_loses_only_its_own_streams(cluster):
    client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    outcomes = [Outcome() for _ in range(STREAMS)]
    threads = [threading.Thread(target=stream_one, args=(client, i, o), daemon=True) for i, o in enumerate(outcomes)]
    for thread in threads:
        thread.start()
    for outcome in outcomes:
        assert outcome.started.wait(SETTLE_TIMEOUT_S), "a stream never started"
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    replicas = {o.replica for o in outcomes}
    assert replicas == set(cluster.replica_ids()), "the streams did not spread over both replicas"

    victim = outcomes[0].replica
    victim_pid = cluster.replica_pid(victim)
    # Two plain requests pinned to the victim, running in its engine: they have no answer yet.
    submitted = "cortexstream_requests_submitted_total"
    before = cluster.metrics(victim)[submitted]
    plain = {path: {} for path in PLAIN}
    plain_threads = [threading.Thread(target=plain_request, args=(cluster.url, path, victim, plain[path]), daemon=True)
                     for path in PLAIN]
    for thread in plain_threads:
        thread.start()
    wait_until(lambda: cluster.metrics(victim)[submitted] >= before + len(PLAIN), "the plain requests running")
    # Streams still running on the victim when it dies; the kill follows at once.
    lost = [o for o in outcomes if o.replica == victim and not o.ended.is_set()]
    os.kill(victim_pid, signal.SIGKILL)
    assert lost, "every stream on the victim ended before the kill"

    for outcome in outcomes:
        assert outcome.ended.wait(SETTLE_TIMEOUT_S * 2), "a stream hung after the replica died"
    survived = [o for o in outcomes if o not in lost]
    assert any(o.replica != victim for o in survived)
    for outcome in lost:
        assert isinstance(outcome.error, openai.APIError), outcome.error
        assert "replica" in str(outcome.error), outcome.error
        assert outcome.tokens < MAX_TOKENS
    for outcome in survived:
        assert outcome.error is None, outcome.error
        assert outcome.finish_reason == "length"
    # A request lost before its answer started is a 503 in its API's error shape.
    for thread in plain_threads:
        thread.join(SETTLE_TIMEOUT_S * 2)
        assert not thread.is_alive(), "a plain request hung after the replica died"
    openai_answer, ollama_answer = plain["/v1/completions"], plain["/api/generate"]
    for answer in (openai_answer, ollama_answer):
        assert answer["status"] == 503, answer
        assert answer["retry_after"]
    assert openai_answer["body"]["error"]["code"] == "replica_lost"
    assert "replica" in ollama_answer["body"]["error"]

    # New requests go to the survivors (or the replacement) and succeed.
    def short_request(index: int) -> int:
        response = httpx.post(f"{cluster.url}/v1/completions", headers=AUTH, timeout=120,
                              json={"model": MODEL, "prompt": counting(7 * index), "max_tokens": 4, "temperature": 0})
        return response.status_code

    with ThreadPoolExecutor(STREAMS) as pool:
        assert list(pool.map(short_request, range(STREAMS))) == [200] * STREAMS

    # Serve replaces the dead replica; the replacement loads its model and serves.
    survivors = set(replicas) - {victim}
    new = wait_until(lambda: set(cluster.replica_ids()) - survivors - {victim}, "a replacement replica",
                     REPLACEMENT_TIMEOUT_S, poll_s=0.5)
    wait_until(lambda: cluster.running_replicas() == len(replicas), "the replacement running",
               REPLACEMENT_TIMEOUT_S, poll_s=0.5)
    (replacement,) = new
    response = httpx.post(f"{cluster.url}/v1/completions", headers={**AUTH, PIN_HEADER: replacement}, timeout=120,
                          json={"model": MODEL, "prompt": "Hello", "max_tokens": 2})
    assert response.status_code == 200
    assert response.headers[PIN_HEADER] == replacement


