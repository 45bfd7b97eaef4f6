// Loading errors, an engine without embeddings, close().
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Engine } from '../index.js';
import { greedy, openEngine } from './helpers.mjs';

test('a missing model file throws model_load_error', () => {
  assert.throws(() => new Engine({ model: '/nonexistent/model.gguf' }), (error) => {
    assert.equal(error.code, 'model_load_error');
    assert.match(error.message, /\/nonexistent\/model\.gguf/);
    return true;
  });
});

test('invalid engine options throw naming the option', () => {
  assert.throws(() => new Engine({ maxRunning: 0 }), { code: 'invalid_request', param: 'maxRunning' });
  assert.throws(() => new Engine({ threads: -2 }), { code: 'invalid_request', param: 'threads' });
});

test('without an embedding model, embed rejects; close cancels in-flight work and is final', async () => {
  const engine = openEngine({ embeddingModel: null });
  assert.equal(engine.modelInfo.embedding, undefined);
  await assert.rejects(engine.embed(['hello']), { code: 'no_embedding_model' });

  const inFlight = engine.generate('Once upon a time', { ...greedy, maxTokens: 2000 });
  await new Promise((resolve) => setTimeout(resolve, 50));
  await engine.close();
  assert.equal(engine.closed, true);
  assert.equal((await inFlight).finishReason, 'cancelled');
  await assert.rejects(engine.generate('hello'), { code: 'engine_closed' });
  await engine.close(); // idempotent
});
