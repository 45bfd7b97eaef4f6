// Cancellation: AbortSignal, a throwing callback, leaving a for-await loop early.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { greedy, openEngine, waitFor } from './helpers.mjs';

let engine;
before(() => {
  engine = openEngine();
});
after(() => engine.close());

/** Long enough that only a cancellation ends it during the test. */
const endless = { ...greedy, maxTokens: 2000 };

/** Asserts that exactly one more request was cancelled and that nothing is left running. */
async function assertOneCancelled(cancelledBefore) {
  assert.equal(engine.metrics().requestsCancelled, cancelledBefore + 1);
  await waitFor(() => engine.metrics().running === 0);
}

test('aborting the signal cancels the request and rejects with an AbortError', async () => {
  const cancelledBefore = engine.metrics().requestsCancelled;
  const controller = new AbortController();
  let chunks = 0;
  const completion = engine.streamWithCallback('Once upon a time', { ...endless, signal: controller.signal }, () => {
    chunks += 1;
    if (chunks === 3) controller.abort();
  });
  await assert.rejects(completion, { name: 'AbortError' });
  assert.equal(chunks, 3, 'no chunk reaches the callback after the abort');
  await assertOneCancelled(cancelledBefore);
});

test('an abort during generate() rejects with the signal reason', async () => {
  const cancelledBefore = engine.metrics().requestsCancelled;
  const controller = new AbortController();
  const reason = new Error('user went away');
  const completion = engine.generate('Once upon a time', { ...endless, signal: controller.signal });
  setTimeout(() => controller.abort(reason), 50);
  await assert.rejects(completion, (error) => error === reason);
  await assertOneCancelled(cancelledBefore);
});

test('an abort ends a for-await loop with an AbortError', async () => {
  const cancelledBefore = engine.metrics().requestsCancelled;
  const controller = new AbortController();
  let chunks = 0;
  await assert.rejects(async () => {
    for await (const _chunk of engine.stream('Once upon a time', { ...endless, signal: controller.signal })) {
      if (++chunks === 2) controller.abort();
    }
  }, { name: 'AbortError' });
  assert.equal(chunks, 2);
  await assertOneCancelled(cancelledBefore);
});

test('an already aborted signal rejects without submitting', async () => {
  const submittedBefore = engine.metrics().requestsSubmitted;
  await assert.rejects(engine.generate('hello', { signal: AbortSignal.abort() }), { name: 'AbortError' });
  assert.equal(engine.metrics().requestsSubmitted, submittedBefore);
});

test('a throwing callback cancels its request, rejects with the error, and the next request works', async () => {
  const cancelledBefore = engine.metrics().requestsCancelled;
  const boom = new Error('boom');
  let calls = 0;
  const completion = engine.streamWithCallback('Once upon a time', endless, () => {
    calls += 1;
    throw boom;
  });
  await assert.rejects(completion, (error) => error === boom);
  assert.equal(calls, 1);
  await assertOneCancelled(cancelledBefore);

  const next = await engine.streamWithCallback('The quick brown fox', { ...greedy, maxTokens: 5 }, () => {});
  assert.equal(next.finishReason, 'length');
  assert.equal(next.usage.completionTokens, 5);
});

test('breaking out of a for-await loop cancels the request within one step', async () => {
  const cancelledBefore = engine.metrics().requestsCancelled;
  const stream = engine.stream('Once upon a time', endless);
  let chunks = 0;
  for await (const _chunk of stream) {
    if (++chunks === 2) break; // leaving the loop cancels, synchronously
  }
  // Read right after the cancel: only the step already past its cancel check may still end.
  const stepsAtCancel = engine.metrics().steps;
  const completion = await stream.completion;
  assert.equal(completion.finishReason, 'cancelled');
  assert.ok(engine.metrics().steps - stepsAtCancel <= 1, `${engine.metrics().steps - stepsAtCancel} steps after the cancel`);
  await assertOneCancelled(cancelledBefore);
});

test('cancel() takes effect within one engine step, whatever the phase', async () => {
  // Several phases, so a cancel applied only every few steps cannot pass by luck.
  for (let tokensBeforeCancel = 3; tokensBeforeCancel < 7; tokensBeforeCancel++) {
    const cancelledBefore = engine.metrics().requestsCancelled;
    const stream = engine.stream('Once upon a time', endless);
    let tokens = 0;
    let stepsAtCancel;
    let finished;
    for await (const chunk of stream) {
      if (chunk.finishReason != null) finished = chunk;
      else if (++tokens === tokensBeforeCancel) {
        stream.cancel();
        stepsAtCancel = engine.metrics().steps;
      }
    }
    const steps = engine.metrics().steps - stepsAtCancel;
    assert.equal(finished.finishReason, 'cancelled');
    assert.ok(steps <= 1, `${steps} steps ran after cancel() (cancelled after ${tokensBeforeCancel} tokens)`);
    await assertOneCancelled(cancelledBefore);
  }
});

test('cancelling during a long prefill ends the request with no token and frees its KV blocks', async (t) => {
  // A prompt alone is prefilled maxBatchTokens a step: 256 makes this one 12 steps (the
  // default 2048 would make it two, too few to cancel in between).
  const engine = openEngine({ maxBatchTokens: 256 });
  t.after(() => engine.close());
  const sentence = engine.tokenize(' The river runs past the old mill and under the stone bridge.');
  const prompt = Array.from({ length: 3000 }, (_, i) => sentence[i % sentence.length]); // 12 prefill steps
  const before = engine.metrics();
  const stream = engine.stream(prompt, { ...greedy, maxTokens: 16 });
  await waitFor(() => engine.metrics().prefillTokensTotal > before.prefillTokensTotal, 60000);
  stream.cancel();
  const stepsAtCancel = engine.metrics().steps;
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const after = engine.metrics();
  assert.deepEqual(chunks.map((c) => c.finishReason), ['cancelled'], 'no token for a cancelled prefill');
  assert.equal(chunks[0].usage.completionTokens, 0);
  assert.equal(chunks[0].usage.promptTokens, prompt.length);
  assert.ok(after.steps - stepsAtCancel <= 1, `${after.steps - stepsAtCancel} steps ran after cancel()`);
  assert.ok(after.prefillTokensTotal - before.prefillTokensTotal < prompt.length, 'the cancel came during the prefill');
  await waitFor(() => engine.metrics().kvBlocksFree === engine.metrics().kvBlocksTotal);
});
