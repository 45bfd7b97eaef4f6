"""Many Python threads and asyncio tasks share one engine."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from conftest import idle, wait_until

N = 16
TOKENS = 6
PROMPTS = [f"Count to {i}:" for i in range(N)]


def steps(engine) -> int:
    return engine.metrics()["steps"]


def assert_batched(steps_taken: int) -> None:
    """Run one after another, N requests of TOKENS tokens need N * TOKENS forward steps. Far
    fewer means they shared steps: the waits released the GIL / did not block the loop."""
    assert steps_taken < N * TOKENS / 2, f"{steps_taken} steps: the requests ran one at a time"


def test_threads_generate_concurrently(engine):
    alone = engine.generate(PROMPTS[3], max_tokens=TOKENS, temperature=0.0, ignore_eos=True)
    before = steps(engine)
    with ThreadPoolExecutor(N) as pool:
        results = list(
            pool.map(lambda p: engine.generate(p, max_tokens=TOKENS, temperature=0.0, ignore_eos=True), PROMPTS)
        )
    assert_batched(steps(engine) - before)
    assert all(r.usage.completion_tokens == TOKENS for r in results)
    # Batching does not change a greedy result.
    assert results[3].token_ids == alone.token_ids


def test_asyncio_tasks_generate_and_stream_concurrently(engine):
    async def streamed(prompt: str) -> str:
        chunks = engine.astream(prompt, max_tokens=TOKENS, temperature=0.0, ignore_eos=True)
        return "".join([c.text async for c in chunks])

    async def main():
        half = PROMPTS[: N // 2]
        generated = [engine.agenerate(p, max_tokens=TOKENS, temperature=0.0, ignore_eos=True) for p in half]
        return await asyncio.gather(*generated, *[streamed(p) for p in half])

    before = steps(engine)
    results = asyncio.run(main())
    assert_batched(steps(engine) - before)
    completions, texts = results[: N // 2], results[N // 2 :]
    assert [c.text for c in completions] == texts
    assert all(c.usage.completion_tokens == TOKENS for c in completions)


def test_cancelling_the_asyncio_task_cancels_the_request(engine):
    before = engine.metrics()["requests_cancelled"]

    async def main():
        first = asyncio.Event()

        async def consume():
            async for _ in engine.astream("Tell me a long story.", max_tokens=2000, ignore_eos=True):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return task.cancelled()

    assert asyncio.run(main())
    assert wait_until(lambda: engine.metrics()["requests_cancelled"] == before + 1 and idle(engine))
