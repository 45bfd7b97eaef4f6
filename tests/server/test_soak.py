"""Load and faults soak (issues 9 and 17), bounded and on loopback.

A real server with a KV cache far too small for its running slots (so sequences are preempted
and recomputed) takes 200 concurrent requests, streaming and plain (non-streaming), a few of
them with long prompts (about 800 and 1500 tokens): most read to the end, some streaming
clients hang up mid-stream, some clients (streaming or plain) are cancelled at a random moment,
which closes their connection. Then:

* every request that was not cancelled got complete output identical to its greedy result run
  alone (computed first, one request at a time);
* every request the engine accepted ended (finished or cancelled), none failed, and exactly
  the requests of clients that left early were cancelled; nothing runs or waits, every KV block
  is free, the server's RSS is back near its baseline, and it still serves a request with its
  exact greedy text;
* finally the server is sent SIGTERM while streaming and plain requests still run: each of
  them ends clearly (finish reason "length" with `cortexstream_finish_reason: "cancelled"`, an
  error event or a closed stream) and never hangs, only OpenAI's finish reasons are ever sent,
  and the process exits.

The figures are printed (`pytest -s tests/server/test_soak.py` shows them).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import AUTH, STARTUP_TIMEOUT_S, start_server, stop_server, summed_metrics, wait_for_health

CLIENTS = 200
MAX_TOKENS = 12
#: Clients that leave early ask for far more tokens, so they are surely mid-stream when they go.
LEAVER_MAX_TOKENS = 200
#: 128 blocks of 16 for 32 running slots, leavers of 200 tokens and prompts of 1500: preemption
#: is certain, and the longest prompt still fits the cache (a longer one would be rejected).
KV_CACHE_TOKENS = 2048
SHUTDOWN_DRAIN_S = 0.5
#: RSS may exceed its warm baseline by this much after the soak (allocator slack, not a leak).
RSS_SLACK_MB = 48

COMPLETION_PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away,",
    "The capital of France is",
    "def fibonacci(n):",
]
CHAT_PROMPTS = ["Name three colors.", "What is 2 + 2?"]
#: About 1500 and 800 tokens: long prefills among the short requests.
LONG_COMPLETION_PROMPT = " ".join(f"Item {i}: the quick brown fox jumps over the lazy dog." for i in range(100))
LONG_CHAT_PROMPT = " ".join(f"Note {i}: a red kite circles above the green hill." for i in range(60)) \
    + " How many notes were there?"
#: How many of the clients send a long prompt (they read to the end).
LONG_PROMPT_CLIENTS = 8
LEAVER_PROMPT = "Write a very long story about a dragon who collects clocks. Chapter 1:"
#: OpenAI's finish reasons: what a strict OpenAI client accepts.
OPENAI_FINISH_REASONS = {None, "stop", "length"}


@dataclass(frozen=True)
class Job:
    chat: bool
    prompt: str
    max_tokens: int = MAX_TOKENS

    def path(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"

    def body(self, stream: bool) -> dict:
        body = {"model": "smollm2", "temperature": 0, "max_tokens": self.max_tokens, "stream": stream}
        if self.chat:
            return {**body, "messages": [{"role": "user", "content": self.prompt}]}
        return {**body, "prompt": self.prompt}


@dataclass
class Outcome:
    job: Job
    plan: str  # "read" to the end, "disconnect" after a few events, "cancel" at a random moment
    stream: bool = True  # False: a plain request, answered in one response
    status: int | None = None
    text: str = ""
    finish_reason: str | None = None
    engine_finish_reason: str | None = None  # `cortexstream_finish_reason`, when OpenAI has no word
    finish_reasons_seen: set = field(default_factory=set)
    done: bool = False  # saw data: [DONE] (a plain request: got its whole answer)
    error_event: dict | None = None
    closed_early: bool = False  # the connection ended without [DONE]
    accepted: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def left_early(self) -> bool:
        return self.plan != "read"


def parse_event(line: str) -> dict | str | None:
    if not line.startswith("data: "):
        return None
    data = line[len("data: "):]
    return data if data == "[DONE]" else json.loads(data)


def take(outcome: Outcome, event: dict) -> None:
    if "error" in event:
        outcome.error_event = event["error"]
        return
    for choice in event["choices"]:
        outcome.text += choice.get("text") or (choice.get("delta") or {}).get("content") \
            or (choice.get("message") or {}).get("content") or ""
        outcome.finish_reason = choice["finish_reason"] or outcome.finish_reason
        outcome.finish_reasons_seen.add(choice["finish_reason"])
        outcome.engine_finish_reason = choice.get("cortexstream_finish_reason") or outcome.engine_finish_reason


async def run_client(client: httpx.AsyncClient, outcome: Outcome, leave_after: int) -> None:
    """Sends one request: streamed, where a "disconnect" plan hangs up after `leave_after`
    content events, or plain."""
    if not outcome.stream:
        await run_plain_client(client, outcome)
        return
    events = 0
    try:
        async with client.stream("POST", outcome.job.path(), json=outcome.job.body(stream=True)) as response:
            outcome.status = response.status_code
            outcome.accepted.set()
            if response.status_code != 200:
                await response.aread()
                return
            async for line in response.aiter_lines():
                event = parse_event(line)
                if event == "[DONE]":
                    outcome.done = True
                elif isinstance(event, dict):
                    take(outcome, event)
                    events += 1
                    if outcome.plan == "disconnect" and events >= leave_after:
                        return  # leaving the block closes the connection mid-stream
        outcome.closed_early = not outcome.done
    except (httpx.RemoteProtocolError, httpx.ReadError):
        outcome.closed_early = True
    finally:
        outcome.accepted.set()


async def run_plain_client(client: httpx.AsyncClient, outcome: Outcome) -> None:
    """Sends one plain request and reads its one answer (cancelling the task closes the connection)."""
    try:
        response = await client.post(outcome.job.path(), json=outcome.job.body(stream=False))
        outcome.status = response.status_code
        body = response.json()
        if "error" in body:
            outcome.error_event = body["error"]
        else:
            take(outcome, body)
            outcome.done = True
    except (httpx.RemoteProtocolError, httpx.ReadError):
        outcome.closed_early = True


async def cancel_later(task: asyncio.Task, outcome: Outcome, delay_s: float) -> None:
    """Cancels the client's task `delay_s` after the server accepted its request (0: at once,
    while it is still queued or in prefill)."""
    await outcome.accepted.wait()
    await asyncio.sleep(delay_s)
    task.cancel()


def read_metrics(text: str) -> dict[str, float]:
    return summed_metrics(text)


async def metrics_when(client: httpx.AsyncClient, condition, timeout_s: float = 30.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = read_metrics((await client.get("/metrics")).text)
        if condition(metrics) or time.monotonic() > deadline:
            return metrics
        await asyncio.sleep(0.05)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) / 1024


def settled(m: dict[str, float]) -> bool:
    return m["cortexstream_running"] == 0 and m["cortexstream_queue_depth"] == 0 \
        and m["cortexstream_kv_blocks_free"] == m["cortexstream_kv_blocks_total"]


async def solo_results(client: httpx.AsyncClient, jobs: list[Job]) -> dict[Job, tuple[str, str]]:
    """Each job's greedy result with nothing else running."""
    results = {}
    for job in jobs:
        response = await client.post(job.path(), json=job.body(stream=False))
        response.raise_for_status()
        choice = response.json()["choices"][0]
        results[job] = (choice.get("text", (choice.get("message") or {}).get("content")), choice["finish_reason"])
    return results


def plan_clients(rng: random.Random, jobs: list[Job], long_jobs: list[Job]) -> list[Outcome]:
    """The 200 clients: half of them plain; 15% leave mid-stream, 15% are cancelled (streaming or
    plain); the first few send long prompts."""
    outcomes = [Outcome(long_jobs[i % len(long_jobs)], "read", stream=i % 2 == 0) for i in range(LONG_PROMPT_CLIENTS)]
    while len(outcomes) < CLIENTS:
        draw = rng.random()
        if draw < 0.15:
            outcome = Outcome(Job(False, LEAVER_PROMPT, LEAVER_MAX_TOKENS), "disconnect")
        elif draw < 0.30:
            outcome = Outcome(Job(False, LEAVER_PROMPT, LEAVER_MAX_TOKENS), "cancel", stream=rng.random() < 0.5)
        else:
            outcome = Outcome(rng.choice(jobs), "read", stream=rng.random() < 0.5)
        outcomes.append(outcome)
    rng.shuffle(outcomes)
    return outcomes


async def cancel_plain_later(task: asyncio.Task, delay_s: float) -> None:
    """Cancels a plain client's task `delay_s` after it started (there is no earlier sign that the
    server took the request): if the request reached the engine it must be cancelled there."""
    await asyncio.sleep(delay_s)
    task.cancel()


async def soak(client: httpx.AsyncClient, pid: int) -> dict:
    rng = random.Random(9)
    jobs = [Job(False, p) for p in COMPLETION_PROMPTS] + [Job(True, p) for p in CHAT_PROMPTS]
    long_jobs = [Job(False, LONG_COMPLETION_PROMPT), Job(True, LONG_CHAT_PROMPT)]
    solo = await solo_results(client, jobs + long_jobs)
    # Warm-up wave: the allocations a full batch needs exist before the baseline is taken.
    await asyncio.gather(*(run_client(client, Outcome(job, "read"), 0) for job in jobs * 6))
    await metrics_when(client, settled)
    rss_baseline = rss_mb(pid)
    before = read_metrics((await client.get("/metrics")).text)

    outcomes, tasks, cancellers = plan_clients(rng, jobs, long_jobs), [], []
    started = time.monotonic()
    for outcome in outcomes:
        task = asyncio.create_task(run_client(client, outcome, leave_after=rng.randint(1, 4)))
        if outcome.plan == "cancel" and outcome.stream:
            cancellers.append(asyncio.create_task(cancel_later(task, outcome, rng.choice([0, 0.05, 0.2, 0.5]))))
        elif outcome.plan == "cancel":
            cancellers.append(asyncio.create_task(cancel_plain_later(task, rng.choice([0.2, 0.5, 1.0, 2.0]))))
        tasks.append(task)
    ended = await asyncio.wait_for(asyncio.gather(*tasks, *cancellers, return_exceptions=True), timeout=600)
    for outcome, end in zip(outcomes, ended):
        if isinstance(end, BaseException) and not isinstance(end, asyncio.CancelledError):
            raise AssertionError(f"a {outcome.plan} client failed: {end!r}") from end
    elapsed = time.monotonic() - started

    after = await metrics_when(client, settled)
    delta = {name: after[name] - before[name] for name in after if name.endswith("_total")}
    # Still serving: one more request, alone, gets its exact greedy text.
    still_serving = await solo_results(client, jobs[:1])
    return {"solo": solo, "outcomes": outcomes, "elapsed": elapsed, "after": after, "delta": delta,
            "rss": (rss_baseline, rss_mb(pid)), "still_serving": still_serving[jobs[0]] == solo[jobs[0]]}


async def shutdown_while_running(client: httpx.AsyncClient, server, count: int) -> tuple[list[Outcome], float]:
    """`count` long requests (a quarter of them plain), then SIGTERM once every stream was accepted,
    every plain request reached the engine and some are generating."""
    outcomes = [Outcome(Job(False, LEAVER_PROMPT, LEAVER_MAX_TOKENS), "read", stream=i % 4 != 0) for i in range(count)]
    submitted = read_metrics((await client.get("/metrics")).text)["cortexstream_requests_submitted_total"]
    tasks = [asyncio.create_task(run_client(client, o, 0)) for o in outcomes]
    await asyncio.gather(*(o.accepted.wait() for o in outcomes if o.stream))
    await metrics_when(client, lambda m: m["cortexstream_requests_submitted_total"] == submitted + count)
    await metrics_when(client, lambda m: m["cortexstream_generated_tokens_total"] > 0
                       and m["cortexstream_running"] > 0)
    server.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    # Never hang: every stream must end well within the drain plus the engine close.
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    return outcomes, time.monotonic() - started


@pytest.fixture(scope="module")
def cramped_server():
    server = start_server("--api-key", AUTH["Authorization"][7:], "--embedding-model", "none",
                          "--kv-cache-tokens", str(KV_CACHE_TOKENS), "--max-running", "32",
                          # A fixed step budget: with step-time-sized prompt chunks, how soon the
                          # long prompts fill the cramped cache (and preempt) would depend on how
                          # busy the machine is.
                          "--target-step-ms", "0",
                          "--shutdown-timeout", str(SHUTDOWN_DRAIN_S))
    try:
        wait_for_health(server, lambda r: r.status_code == 200, STARTUP_TIMEOUT_S)
        yield server
    finally:
        stop_server(server)


def test_soak_200_streaming_and_plain_requests_with_disconnects_cancels_long_prompts_preemption_and_shutdown(
        cramped_server):
    server = cramped_server
    # No keep-alive: a pooled connection the server times out just as it is reused would fail a
    # request before it is sent, a client-side race that says nothing about the server.
    limits = httpx.Limits(max_connections=CLIENTS + 50, max_keepalive_connections=0)

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120, limits=limits) as client:
            result = await soak(client, server.process.pid)
            result["shutdown"] = await shutdown_while_running(client, server, count=40)
            return result

    result = asyncio.run(scenario())
    outcomes: list[Outcome] = result["outcomes"]
    solo, delta, after = result["solo"], result["delta"], result["after"]
    rss_baseline, rss_after = result["rss"]
    read = [o for o in outcomes if not o.left_early]
    leavers = [o for o in outcomes if o.left_early]
    matching = [o for o in read if (o.text, o.finish_reason) == solo[o.job] and o.done]
    long_read = [o for o in read if o.job.prompt in (LONG_COMPLETION_PROMPT, LONG_CHAT_PROMPT)]
    shutdown_outcomes, shutdown_s = result["shutdown"]
    ends = {"cancelled": 0, "error event": 0, "closed stream": 0, "finished": 0}
    for o in shutdown_outcomes:
        if o.error_event is not None:
            ends["error event"] += 1
        elif o.finish_reason == "length" and o.engine_finish_reason == "cancelled" and o.done:
            ends["cancelled"] += 1
        elif o.finish_reason in ("stop", "length") and o.engine_finish_reason is None and o.done:
            ends["finished"] += 1
        elif o.closed_early:
            ends["closed stream"] += 1
    exit_code = server.process.wait(timeout=30)
    accepted = delta["cortexstream_requests_submitted_total"]
    ended_normally = delta["cortexstream_requests_finished_total"] - delta["cortexstream_requests_cancelled_total"]

    print(f"""
soak: {CLIENTS} concurrent clients ({sum(o.stream for o in outcomes)} streaming, \
{sum(not o.stream for o in outcomes)} plain, {len(long_read)} with long prompts) in {result['elapsed']:.1f}s \
on a {KV_CACHE_TOKENS}-token KV cache
  read to the end: {len(read)}, identical to their solo greedy result: {len(matching)}
  left early: {len(leavers)} ({sum(o.plan == 'disconnect' for o in leavers)} stream disconnects, \
{sum(o.plan == 'cancel' and o.stream for o in leavers)} stream cancels, \
{sum(o.plan == 'cancel' and not o.stream for o in leavers)} plain cancels); engine accepted {accepted:.0f}, \
cancelled: {delta['cortexstream_requests_cancelled_total']:.0f}
  engine: ended {delta['cortexstream_requests_finished_total']:.0f}, failed \
{delta['cortexstream_requests_failed_total']:.0f}, rejected {delta['cortexstream_requests_rejected_total']:.0f}, \
preemptions {delta['cortexstream_preemptions_total']:.0f}, generated tokens \
{delta['cortexstream_generated_tokens_total']:.0f}
  afterwards: running {after['cortexstream_running']:.0f}, queued {after['cortexstream_queue_depth']:.0f}, \
KV blocks free {after['cortexstream_kv_blocks_free']:.0f}/{after['cortexstream_kv_blocks_total']:.0f}
  RSS: baseline {rss_baseline:.1f} MB, afterwards {rss_after:.1f} MB ({rss_after - rss_baseline:+.1f} MB)
shutdown with {len(shutdown_outcomes)} requests running ({sum(not o.stream for o in shutdown_outcomes)} plain): all ended within {shutdown_s:.1f}s: {ends}; \
exit code {exit_code}""")

    assert all(o.status == 200 for o in read), [(o.plan, o.status) for o in read if o.status != 200]
    # A plain client cancelled before its request was sent has no status; every other leaver was
    # answered 200 (its stream started) or never answered.
    assert all(o.status in (200, None) for o in leavers), [(o.plan, o.status) for o in leavers]
    assert len(matching) == len(read), [(o.job, o.text, o.finish_reason, solo[o.job]) for o in read
                                        if o not in matching][:5]
    assert len(long_read) == LONG_PROMPT_CLIENTS
    assert all(o.finish_reason is None for o in leavers), "a leaver finished before it left: make it longer"
    # Every request the engine accepted ended (requests_finished counts cancelled ones too);
    # exactly the clients that read to the end finished normally, so every leaver's request that
    # reached the engine was cancelled there; the streaming leavers' requests surely reached it.
    assert delta["cortexstream_requests_finished_total"] == accepted
    assert ended_normally == len(read)
    assert delta["cortexstream_requests_cancelled_total"] == accepted - len(read)
    assert delta["cortexstream_requests_cancelled_total"] >= sum(o.stream for o in leavers)
    assert sum(not o.stream for o in leavers) > 0 and accepted > len(read) + sum(o.stream for o in leavers), \
        "no plain request was cancelled while in the engine"
    assert delta["cortexstream_requests_failed_total"] == 0
    assert delta["cortexstream_preemptions_total"] > 0, "the KV cache was not small enough to preempt"
    assert settled(after)
    assert result["still_serving"], "after the soak the server did not give the exact greedy text"
    assert rss_after - rss_baseline < RSS_SLACK_MB
    assert all(o.finish_reasons_seen <= OPENAI_FINISH_REASONS for o in outcomes + shutdown_outcomes), \
        {frozenset(o.finish_reasons_seen) for o in outcomes + shutdown_outcomes}

    assert sum(ends.values()) == len(shutdown_outcomes), [vars(o) for o in shutdown_outcomes]
    assert ends["cancelled"] + ends["error event"] + ends["closed stream"] > 0, "nothing was running at shutdown"
    assert any(not o.stream and o.engine_finish_reason == "cancelled" for o in shutdown_outcomes), \
        "no plain request was answered as cut short by the shutdown"
    # uvicorn re-raises the signal it caught once it has shut down cleanly.
    assert exit_code in (0, -signal.SIGTERM)
