// Past the queue limit a submit fails at once with code 'overloaded' instead of queueing
// without bound; the requests already accepted carry on (issue 9, "Overload policy").
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { greedy, openEngine, waitFor } from './helpers.mjs';

test('a submit past maxQueue rejects with overloaded and accepted work continues', async () => {
  const engine = openEngine({ embeddingModel: null, kvCacheTokens: 1024, maxRunning: 1, maxQueue: 1 });
  const long = { ...greedy, maxTokens: 2000 };
  const running = engine.stream('Tell me a long story.', long);
  await waitFor(() => engine.metrics().running === 1, 10_000);
  const waiting = engine.stream('Tell me another story.', long); // takes the one queue slot
  await assert.rejects(engine.generate('One too many.', long), (error) => {
    assert.equal(error.code, 'overloaded');
    assert.match(error.message, /max_queue = 1/);
    return true;
  });
  running.cancel();
  assert.equal((await running.completion).finishReason, 'cancelled');
  const iterator = waiting[Symbol.asyncIterator]();
  assert.equal((await iterator.next()).done, false); // the queued request runs now
  waiting.cancel();
  assert.equal((await waiting.completion).finishReason, 'cancelled');
  const canary = await engine.generate('The quick brown fox', { temperature: 0, maxTokens: 6 });
  assert.equal(canary.text, ' with a quick brown bear.');
  await engine.close();
});
