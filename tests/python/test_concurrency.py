"""Many Python threads and asyncio tasks share one engine."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from conftest import idle, wait_until

N = 16
PROMPTS = [f"Count to {i}:" for i in range(N)]


def test_threads_generate_concurrently(engine):
    alone = engine.generate(PROMPTS[3], max_tokens=6, temperature=0.0, ignore_eos=True)
    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(lambda p: engine.generate(p, max_tokens=6, temperature=0.0, ignore_eos=True), PROMPTS))
    assert all(r.usage.completion_tokens == 6 for r in results)
    # Batching does not change a greedy result.
    assert results[3].token_ids == alone.token_ids


def test_asyncio_tasks_generate_and_stream_concurrently(engine):
    async def streamed(prompt: str) -> str:
        return "".join([c.text async for c in engine.astream(prompt, max_tokens=6, temperature=0.0, ignore_eos=True)])

    async def main():
        generated = [engine.agenerate(p, max_tokens=6, temperature=0.0, ignore_eos=True) for p in PROMPTS[: N // 2]]
        streams = [streamed(p) for p in PROMPTS[: N // 2]]
        return await asyncio.gather(*generated, *streams)

    results = asyncio.run(main())
    completions, texts = results[: N // 2], results[N // 2 :]
    assert [c.text for c in completions] == texts
    assert all(c.usage.completion_tokens == 6 for c in completions)


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
