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

test('breaking out of a for-await loop cancels the request', async () => {
  const cancelledBefore = engine.metrics().requestsCancelled;
  const stream = engine.stream('Once upon a time', endless);
  let chunks = 0;
  for await (const _chunk of stream) {
    if (++chunks === 2) break;
  }
  const completion = await stream.completion;
  assert.equal(completion.finishReason, 'cancelled');
  assert.ok(completion.usage.completionTokens < 100);
  await assertOneCancelled(cancelledBefore);
});
