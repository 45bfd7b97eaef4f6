// Repeated stream/cancel and create/close loops leave no memory behind (issue 9). RSS is read
// after a warm-up, so one-time growth (allocator arenas, V8 heap sizing) is behind us; a leak
// per request or per engine shows as growth proportional to the cycle count.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { greedy, openEngine, waitFor } from './helpers.mjs';

const MIB = 1024 * 1024;
const long = { ...greedy, maxTokens: 2000 };

/**
 * RSS after a full garbage collection (test.sh runs node with `--expose-gc`). Without it the
 * create/close loop swings between 70 and 700 MiB: what a closed engine still holds (tokenizer,
 * chat template, model info; the weights and KV cache are freed by close()) lives until V8
 * collects the JS object, and V8 does not know that memory exists. With a collection per cycle
 * RSS is flat, so nothing leaks; telling V8 the external size is a follow-up.
 */
function rss() {
  globalThis.gc?.();
  return process.memoryUsage().rss;
}

/** Eight streams, each read to its first chunk and then ended early one of three ways. */
async function cancelInTurn(engine, turn) {
  const way = turn % 3;
  const controller = new AbortController();
  const options = way === 2 ? { ...long, signal: controller.signal } : long;
  const streams = Array.from({ length: 8 }, (_, i) => engine.stream(`Story number ${i}:`, options));
  const iterators = streams.map((stream) => stream[Symbol.asyncIterator]());
  for (const iterator of iterators) assert.equal((await iterator.next()).done, false);
  if (way === 0) for (const iterator of iterators) await iterator.return(); // leaving for-await early
  else if (way === 1) for (const stream of streams) stream.cancel();
  else controller.abort();
  // Each completion settles only once the engine has ended its request.
  await Promise.all(streams.map((stream) => stream.completion.catch(() => {})));
}

test('1,000 stream/cancel cycles do not grow RSS', async () => {
  const engine = openEngine({ embeddingModel: null });
  const cancelledBefore = engine.metrics().requestsCancelled;
  for (let turn = 0; turn < 24; turn++) await cancelInTurn(engine, turn); // warm-up: 192 requests
  await waitFor(() => engine.metrics().running === 0, 10_000);
  const baseline = rss();
  const started = Date.now();
  for (let turn = 0; turn < 125; turn++) await cancelInTurn(engine, turn); // 1,000 requests
  await waitFor(() => engine.metrics().running === 0, 10_000);
  const growth = rss() - baseline;
  console.log(`[rss] 1000 stream/cancel cycles: ${(baseline / MIB).toFixed(1)} -> ${((baseline + growth) / MIB).toFixed(1)} MiB in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  assert.equal(engine.metrics().requestsCancelled, cancelledBefore + 1192);
  // 8 MiB over 1,000 requests: a leak of a request's output or logits row (192 KiB) fails it.
  assert.ok(growth < 8 * MIB, `RSS grew ${(growth / MIB).toFixed(1)} MiB over 1,000 cancelled requests`);
  await engine.close();
});

test('1,000 create/stream/cancel/close cycles return to the baseline', async () => {
  const samples = [];
  for (let cycle = 0; cycle < 1000; cycle++) {
    const engine = openEngine({ embeddingModel: null, kvCacheTokens: 512, maxRunning: 2 });
    const stream = engine.stream('Tell me a long story.', long);
    const iterator = stream[Symbol.asyncIterator]();
    assert.equal((await iterator.next()).done, false);
    stream.cancel();
    assert.equal((await stream.completion).finishReason, 'cancelled');
    await engine.close();
    samples.push(rss());
  }
  const every100th = samples.filter((_, i) => i % 100 === 0).map((s) => Math.round(s / MIB));
  console.log(`[rss] 1000 create/stream/cancel/close cycles, MiB every 100th: ${every100th.join(' ')}, last ${Math.round(samples.at(-1) / MIB)}`);
  // An engine holds ~100 MiB of weights: 16 MiB over 996 cycles means none of that is kept.
  const growth = Math.max(...samples.slice(4)) - samples[3];
  assert.ok(growth < 16 * MIB, `RSS kept growing: ${every100th} MiB`);
});
