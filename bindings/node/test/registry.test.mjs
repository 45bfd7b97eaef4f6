// The core's model registry through the Node door (issue 22 item 1): SmolLM2 under two names with
// different settings plus MiniLM, requests to each interleaved, keep-alive 0 unloading a model as
// soon as it is idle, an unknown name rejected with `model_not_found` naming it, and an engine
// lent by a lease that its `close()` does not stop.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Registry, modelsDir, setLogListener } from '../index.js';
import { waitFor } from './helpers.mjs';

const smollm2 = path.join(modelsDir(), 'smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf');
const minilm = path.join(modelsDir(), 'minilm');
const settings = { kvCacheTokens: 1024, maxRunning: 4, threads: 1 };

const registry = new Registry();
registry.register('small', smollm2, { ...settings, contextLength: 256 });
registry.register('large', smollm2, settings);
registry.register('minilm', minilm, { embedding: true, threads: 1 });
after(() => registry.close());

const greedy = { temperature: 0, ignoreEos: true, maxTokens: 6 };
const loadedNames = () => registry.loaded().map((model) => model.name);

test('models by name, with their own settings, interleaved', async () => {
  assert.deepEqual(registry.names(), ['large', 'minilm', 'small']);
  const [small, large, embedder] = await Promise.all(['small', 'large', 'minilm'].map((name) => registry.get(name)));
  try {
    assert.equal(small.engine.modelInfo.contextLength, 256);
    assert.equal(large.engine.modelInfo.contextLength, 1024);
    assert.equal(embedder.engine, null);
    assert.ok(embedder.isEmbedding);
    const texts = [];
    for (const prompt of ['The capital of France is', 'Once upon a time']) {
      const [a, b, vectors] = await Promise.all([
        small.engine.generate(prompt, greedy),
        large.engine.generate(prompt, greedy),
        embedder.embed(prompt),
      ]);
      texts.push(a.text, b.text);
      assert.equal(vectors[0].length, 384);
    }
    assert.equal(texts[0], texts[1]);
    assert.equal(texts[2], texts[3]);
    assert.notEqual(texts[0], texts[2]);
    const listed = Object.fromEntries(registry.loaded().map((model) => [model.name, model]));
    assert.deepEqual(Object.keys(listed).sort(), ['large', 'minilm', 'small']);
    for (const model of Object.values(listed)) assert.equal(model.activeRequests, 1);
    assert.ok(listed.small.memoryBytes > 90_000_000, `${listed.small.memoryBytes}`);
    assert.ok(listed.small.expiresAt instanceof Date);
  } finally {
    await Promise.all([small.release(), large.release(), embedder.release()]);
  }
  assert.ok(registry.loaded().every((model) => model.activeRequests === 0));
});

test('keepAlive 0 unloads a model as soon as its last lease ends', async () => {
  const lease = await registry.get('small', 0);
  assert.ok(loadedNames().includes('small'));
  await lease.engine.generate('Hi', greedy);
  await lease.release();
  assert.ok(!loadedNames().includes('small'), `${loadedNames()}`);
  await lease.release(); // idempotent
  assert.ok(await registry.unload('large'));
  assert.ok(!(await registry.unload('large')));
});

test('an unknown model rejects with model_not_found naming it', async () => {
  await assert.rejects(registry.get('gpt-4'), (error) => {
    assert.equal(error.code, 'model_not_found');
    assert.match(error.message, /gpt-4/);
    assert.match(error.message, /large, minilm, small/);
    return true;
  });
  await assert.rejects(registry.unload('gpt-4'), { code: 'model_not_found' });
});

test('bad registrations and keep-alives are refused naming the field', async () => {
  assert.throws(() => registry.register('small', smollm2), { code: 'invalid_request', param: 'name' });
  assert.throws(() => registry.register('x', smollm2, { maxRunning: 0 }), { code: 'invalid_request', param: 'maxRunning' });
  assert.throws(() => registry.register('y', minilm, { embedding: true, maxRunning: 2 }), {
    code: 'invalid_request',
    param: 'maxRunning',
  });
  await assert.rejects(registry.get('small', 'soon'), { code: 'invalid_request', param: 'keepAlive' });
  assert.throws(() => new Registry({ memoryBudgetBytes: -1 }), { code: 'invalid_request', param: 'memoryBudgetBytes' });
  assert.deepEqual(registry.names(), ['large', 'minilm', 'small']);
});

test("a leased engine's close() leaves the model to the registry", async () => {
  const lease = await registry.get('large');
  try {
    await lease.engine.close();
    assert.equal(lease.engine.closed, false);
    const completion = await lease.engine.generate('Hello', greedy);
    assert.equal(completion.tokenIds.length, 6);
  } finally {
    await lease.release();
  }
});

test('an engine a registry builds honours logPrompts', async () => {
  const logging = new Registry();
  logging.register('logged', smollm2, { ...settings, kvCacheTokens: 256, maxRunning: 1, logPrompts: true });
  logging.register('quiet', smollm2, { ...settings, kvCacheTokens: 256, maxRunning: 1 });
  const records = [];
  setLogListener((record) => records.push(record), 'info');
  try {
    for (const name of ['logged', 'quiet']) {
      const lease = await logging.get(name);
      try {
        await lease.engine.generate('The secret ingredient is', { maxTokens: 1, tag: `node-${name}` });
      } finally {
        await lease.release();
      }
    }
    await waitFor(() => records.filter((r) => r.message === 'finished').length >= 2, 10000);
  } finally {
    setLogListener(null);
    await logging.close();
  }
  const queued = (tag) => records.filter((r) => r.message === 'queued' && r.fields.tag === tag);
  assert.deepEqual(queued('node-logged').map((r) => r.fields.prompt), ['The secret ingredient is']);
  assert.deepEqual(queued('node-quiet').map((r) => r.fields.prompt), [undefined]);
});

test('unregister, metrics of every loaded model (embedding ones included) and shutdown', async () => {
  const own = new Registry();
  own.register('chat', smollm2, { ...settings, kvCacheTokens: 256, maxRunning: 1 });
  own.register('minilm', minilm, { embedding: true, threads: 1 });
  try {
    assert.deepEqual(own.metrics(), {}, 'nothing is loaded yet');
    const embedder = await own.get('minilm');
    await embedder.embed(['one', 'two three']);
    await embedder.embed('four');
    await embedder.release();
    const chat = await own.get('chat');
    await chat.engine.generate('Hi', { ...greedy, maxTokens: 2 });
    await chat.release();
    const metrics = own.metrics();
    assert.deepEqual(Object.keys(metrics), ['chat', 'minilm']);
    // [CLS] and [SEP] around each text: 3 + 4 + 3 tokens.
    assert.deepEqual(metrics.minilm, { embeddingRequests: 2, embeddingTokensTotal: 10 });
    assert.equal(metrics.chat.generatedTokensTotal, 2);
    assert.equal(metrics.chat.requestsFinished, 1);

    assert.equal(await own.unregister('chat'), true);
    assert.deepEqual(own.names(), ['minilm']);
    assert.deepEqual(Object.keys(own.metrics()), ['minilm']);
    await assert.rejects(own.get('chat'), { code: 'model_not_found' });
    assert.equal(await own.unregister('chat'), false);

    // Shutdown ends what a lease still runs, as cancelled.
    own.register('long', smollm2, { ...settings, kvCacheTokens: 1024, maxRunning: 1 });
    const lease = await own.get('long');
    const inFlight = lease.engine.generate('Once upon a time', { maxTokens: 500, ignoreEos: true });
    await own.shutdown();
    assert.equal((await inFlight).finishReason, 'cancelled');
    await lease.release();
    await assert.rejects(own.get('minilm'), { code: 'engine_closed' });
  } finally {
    await own.close();
  }
});
