"""Per-key rate limits, against the real app and the real SmolLM2 (in-process, so the limits'
clock is a fake one that tests move instead of sleeping).

Each test builds its own app (its own keys and buckets) over one engine loaded for the module;
concurrent clients are asyncio tasks on one httpx client.
"""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import pytest

from cortexstream.server.app import create_app
from cortexstream.server.config_file import ApiKey
from cortexstream.server.ratelimit import KeyLimiter, TokenBucket, duration_text
from cortexstream.server.served import EngineOptions, ModelEntry
from cortexstream.server.state import ServerConfig, ServerState

COMPLETION = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 2, "temperature": 0}
OLLAMA_GENERATE = {"model": "smollm2", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def loaded_state():
    engine = EngineOptions(max_running=8, kv_cache_tokens=2048, context_length=512)
    config = ServerConfig(models=(ModelEntry("smollm2", "smollm2", engine=engine),), engine=engine)
    state = ServerState(config)
    state.load()
    assert state.ready, state.load_error
    yield state
    state.close()


def key(name: str, requests: int | None = None, tokens: int | None = None) -> ApiKey:
    return ApiKey(name=name, secret=f"secret-of-{name}", requests_per_minute=requests, tokens_per_minute=tokens)


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer secret-of-{name}"}


def run(loaded_state, keys: list[ApiKey], clock: FakeClock, scenario):
    """Runs `scenario(client)` against an app with `keys` over the loaded engine."""
    app = create_app(ServerConfig(api_keys=tuple(keys)), clock=clock)
    # No lifespan: the state of a loaded server, shared by this module's apps.
    app.state.server = loaded_state

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            return await scenario(client)

    return asyncio.run(main())


def completions(client: httpx.AsyncClient, name: str, count: int, **extra):
    return [client.post("/v1/completions", json={**COMPLETION, **extra}, headers=auth(name)) for _ in range(count)]


# -- requests per minute -------------------------------------------------------------------

def test_requests_per_minute_hold_under_concurrent_clients_and_other_keys_are_unaffected(loaded_state):
    clock = FakeClock()

    async def scenario(client):
        # Ten of alice's requests and four of bob's, all at once.
        return await asyncio.gather(*completions(client, "alice", 10), *completions(client, "bob", 4))

    responses = run(loaded_state, [key("alice", requests=3), key("bob", requests=5)], clock, scenario)
    alice, bob = responses[:10], responses[10:]
    assert sorted(r.status_code for r in alice) == [200] * 3 + [429] * 7
    assert [r.status_code for r in bob] == [200] * 4, "alice's limit does not touch bob"
    assert all(r.json()["choices"][0]["text"] for r in alice + bob if r.status_code == 200)
    # Bob's headers count bob's requests only.
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in bob) == [1, 2, 3, 4]
    assert {r.headers["x-ratelimit-limit-requests"] for r in bob} == {"5"}


def test_a_refusal_has_openai_shape_headers_and_retry_after(loaded_state):
    clock = FakeClock()

    async def scenario(client):
        admitted = [await request for request in completions(client, "alice", 3)]
        openai_refusal = await client.post("/v1/completions", json=COMPLETION, headers=auth("alice"))
        ollama_refusal = await client.post("/api/generate", json=OLLAMA_GENERATE, headers=auth("alice"))
        return admitted, openai_refusal, ollama_refusal

    admitted, refused, ollama = run(loaded_state, [key("alice", requests=3)], clock, scenario)
    assert [r.status_code for r in admitted] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in admitted] == ["2", "1", "0"]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("requests", "rate_limit_exceeded", None)
    assert "alice" in error["message"] and "requests per minute" in error["message"]
    # 3 a minute: one comes back every 20 s; all three after a minute.
    assert refused.headers["retry-after"] == "20"
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert ollama.status_code == 429 and set(ollama.json()) == {"error"}
    assert "Rate limit reached" in ollama.json()["error"] and ollama.headers["retry-after"] == "20"


def test_retry_after_follows_the_clock(loaded_state):
    clock = FakeClock()

    async def scenario(client):
        statuses = []

        async def attempt():
            response = await client.post("/v1/completions", json=COMPLETION, headers=auth("alice"))
            statuses.append((response.status_code, response.headers.get("retry-after")))

        await attempt()
        await attempt()
        await attempt()        # refused: the next request is due in 30 s
        clock.advance(29.5)
        await attempt()        # still refused, rounded up to 1 s
        clock.advance(0.5)
        await attempt()        # due now
        await attempt()        # the refill was used up again
        return statuses

    statuses = run(loaded_state, [key("alice", requests=2)], clock, scenario)
    assert statuses == [(200, None), (200, None), (429, "30"), (429, "1"), (200, None), (429, "30")]


# -- tokens per minute ---------------------------------------------------------------------

def usage_tokens(response: httpx.Response) -> int:
    usage = response.json()["usage"]
    return usage["prompt_tokens"] + usage["completion_tokens"]


def test_tokens_per_minute_count_each_response_and_refuse_past_the_limit(loaded_state):
    clock = FakeClock()
    limit = 40

    async def scenario(client):
        answered = []
        while len(answered) < 20:
            response = await client.post("/v1/completions", json=COMPLETION, headers=auth("alice"))
            answered.append(response)
            if response.status_code == 429:
                break
        other = await client.post("/v1/completions", json=COMPLETION, headers=auth("bob"))
        return answered, other

    answered, bob = run(loaded_state, [key("alice", tokens=limit), key("bob", tokens=limit)], clock, scenario)
    *served, refused = answered
    assert served and all(r.status_code == 200 for r in served)
    assert refused.status_code == 429, "the limit was never reached"
    used = 0
    for response in served:
        # What a response's headers say is left is the limit minus what the earlier ones used.
        assert response.headers["x-ratelimit-remaining-tokens"] == str(max(0, limit - used))
        assert used < limit, "a request was admitted after the limit was used up"
        used += usage_tokens(response)
    assert used >= limit
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    # The bucket is `limit - used` (<= 0); one token is back after (1 - (limit - used)) * 60 / limit s.
    assert refused.headers["retry-after"] == str(math.ceil((used - limit + 1) * 60 / limit))
    assert bob.status_code == 200 and bob.headers["x-ratelimit-remaining-tokens"] == str(limit)


def test_concurrent_requests_overshoot_tokens_only_by_what_was_in_flight(loaded_state):
    clock = FakeClock()

    async def scenario(client):
        wave = await asyncio.gather(*completions(client, "alice", 4))
        after = await client.post("/v1/completions", json=COMPLETION, headers=auth("alice"))
        return wave, after

    wave, after = run(loaded_state, [key("alice", tokens=5)], clock, scenario)
    # All four arrived while the key had tokens left (their cost is known only at the end) ...
    assert [r.status_code for r in wave] == [200] * 4
    used = sum(usage_tokens(r) for r in wave)
    # ... and the key pays the overshoot back before it is served again.
    assert after.status_code == 429
    assert after.headers["retry-after"] == str(math.ceil((used - 5 + 1) * 60 / 5))


def test_a_stream_is_charged_its_tokens(loaded_state):
    clock = FakeClock()
    limit = 1000

    async def scenario(client):
        stream = await client.post("/v1/completions", headers=auth("alice"), json={
            **COMPLETION, "stream": True, "stream_options": {"include_usage": True}})
        after = await client.post("/v1/completions", json=COMPLETION, headers=auth("alice"))
        return stream, after

    stream, after = run(loaded_state, [key("alice", tokens=limit)], clock, scenario)
    assert stream.status_code == 200
    events = [line.removeprefix("data: ") for line in stream.text.splitlines() if line.startswith("data: {")]
    usage = json.loads(events[-1])["usage"]
    assert after.headers["x-ratelimit-remaining-tokens"] == str(limit - usage["total_tokens"])


async def post_and_leave(app, body: dict, headers: dict[str, str], events_before_leaving: int) -> int:
    """Posts a completion straight to the ASGI app and disconnects after reading
    `events_before_leaving` SSE events (0: right after sending the body; httpx's ASGI
    transport cannot leave mid-request); returns the events it got."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "server": ("test", 80), "client": ("test", 1234),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    enough = asyncio.Event()
    if events_before_leaving == 0:
        enough.set()
    events = 0
    body_sent = False

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await enough.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal events
        if message["type"] == "http.response.body":
            events += message.get("body", b"").count(b"data: {")
            if events >= events_before_leaving:
                enough.set()

    await app(scope, receive, send)
    return events


def test_a_stream_cut_short_is_charged_what_it_was_sent(loaded_state):
    clock = FakeClock()
    limit = 1000
    app = create_app(ServerConfig(api_keys=(key("alice", tokens=limit), key("bob"))), clock=clock)
    app.state.server = loaded_state
    body = {**COMPLETION, "max_tokens": 200, "stream": True, "ignore_eos": True}

    async def scenario():
        events = await post_and_leave(app, body, auth("alice"), events_before_leaving=2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            after = await client.post("/v1/completions", json=COMPLETION, headers=auth("alice"))
            prompt = await client.post("/v1/completions", json={**COMPLETION, "max_tokens": 1},
                                       headers=auth("bob"))
        return events, after, prompt

    events, after, prompt = asyncio.run(scenario())
    assert 2 <= events < 200, "the client left mid-stream"
    prompt_tokens = prompt.json()["usage"]["prompt_tokens"]
    charged = limit - int(after.headers["x-ratelimit-remaining-tokens"])
    # The prompt, the tokens the client got, and at most the few the engine made before it
    # heard of the cancel; never nothing, never the whole 200.
    assert prompt_tokens + 2 <= charged < prompt_tokens + 200


def test_a_plain_request_abandoned_before_its_answer_is_charged_its_prompt(loaded_state):
    clock = FakeClock()
    limit = 1000
    app = create_app(ServerConfig(api_keys=(key("alice", tokens=limit), key("bob"))), clock=clock)
    app.state.server = loaded_state
    body = {**COMPLETION, "max_tokens": 200, "ignore_eos": True}

    async def scenario():
        await post_and_leave(app, body, auth("alice"), events_before_leaving=0)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            after = await client.post("/v1/completions", json=COMPLETION, headers=auth("alice"))
            prompt = await client.post("/v1/completions", json={**COMPLETION, "max_tokens": 1},
                                       headers=auth("bob"))
        return after, prompt

    after, prompt = asyncio.run(scenario())
    assert after.headers["x-ratelimit-remaining-tokens"] == str(limit - prompt.json()["usage"]["prompt_tokens"])


# -- keys ----------------------------------------------------------------------------------

def test_an_unlimited_key_has_no_limits_and_a_wrong_key_is_refused(loaded_state):
    clock = FakeClock()

    async def scenario(client):
        unlimited = await asyncio.gather(*completions(client, "root", 5))
        wrong = await client.post("/v1/completions", json=COMPLETION, headers=auth("mallory"))
        health = await client.get("/health")
        return unlimited, wrong, health

    unlimited, wrong, health = run(loaded_state, [key("alice", requests=1), key("root")], clock, scenario)
    assert [r.status_code for r in unlimited] == [200] * 5
    assert not any(name.startswith("x-ratelimit") for r in unlimited for name in r.headers)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert health.status_code == 200


# -- the buckets alone ---------------------------------------------------------------------

def test_a_bucket_refills_continuously_up_to_its_limit_and_ignores_a_clock_going_back():
    bucket = TokenBucket(60, now=0.0)
    bucket.level = 0.0
    bucket.refill(now=2.5)
    assert bucket.level == pytest.approx(2.5)
    bucket.refill(now=1.0)  # earlier than the last refill: nothing added, nothing taken
    assert bucket.level == pytest.approx(2.5)
    bucket.refill(now=1000.0)
    assert bucket.level == 60


def test_a_refusal_for_tokens_does_not_use_up_a_request():
    clock = FakeClock()
    limiter = KeyLimiter(key("alice", requests=2, tokens=10), clock)
    assert limiter.admit() is None
    limiter.charge_tokens(30)
    refusal = limiter.admit()
    assert refusal is not None and refusal.kind == "tokens"
    assert limiter.requests.remaining() == 1


@pytest.mark.parametrize(("seconds", "text"), [(0.0, "0ms"), (0.2501, "251ms"), (1.0, "1s"), (1.5, "1.5s"),
                                               (60.0, "1m0s"), (360.0, "6m0s"), (90.25, "1m30.25s")])
def test_reset_durations_are_written_as_openai_writes_them(seconds, text):
    assert duration_text(seconds) == text
