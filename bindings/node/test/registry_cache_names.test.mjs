// Registry.register and Engine take the model cache's names ("smollm2", "minilm", "gemma3") as
// Python's do (issue 22 leftovers): a name resolves to its file or folder in the cache, an
// unknown word is refused with `model_not_found` naming it and the known names, a known model
// not yet pulled with the command that pulls it. A path is still a path.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Engine, Registry, modelsDir } from '../index.js';

const registry = new Registry();
after(() => registry.close());

test('cache names register and load the cached models', async () => {
  registry.register('chat', 'smollm2', { kvCacheTokens: 512, contextLength: 256, threads: 1 });
  registry.register('vectors', 'minilm', { embedding: true, threads: 1 });
  const [chat, vectors] = await Promise.all([registry.get('chat'), registry.get('vectors')]);
  try {
    assert.equal(chat.engine.modelInfo.contextLength, 256);
    assert.match(chat.engine.modelInfo.path, /SmolLM2-135M-Instruct\.Q4_1\.gguf$/);
    assert.ok(vectors.isEmbedding);
    const [vector] = await vectors.embed('hello');
    assert.equal(vector.length, 384);
  } finally {
    await Promise.all([chat.release(), vectors.release()]);
  }
});

test('an unknown name is refused naming it and the known names; nothing is registered', () => {
  assert.throws(() => registry.register('x', 'llama9'), (error) => {
    assert.equal(error.code, 'model_not_found');
    assert.equal(error.param, 'model');
    assert.match(error.message, /"llama9"/);
    assert.match(error.message, /gemma3, minilm, smollm2/);
    return true;
  });
  assert.ok(!registry.names().includes('x'), `${registry.names()}`);
  assert.throws(() => new Engine({ model: 'llama9' }), { code: 'model_not_found', param: 'model' });
  assert.throws(() => new Engine({ embeddingModel: 'bert9' }), { code: 'model_not_found', param: 'embeddingModel' });
});

test('a known name not in the cache says how to pull it', () => {
  const saved = process.env.CORTEXSTREAM_CACHE;
  const empty = mkdtempSync(path.join(os.tmpdir(), 'cortexstream-empty-cache-'));
  process.env.CORTEXSTREAM_CACHE = empty;
  try {
    assert.equal(modelsDir(), path.join(empty, 'models'));
    assert.throws(() => registry.register('y', 'gemma3'), (error) => {
      assert.equal(error.code, 'model_not_found');
      assert.equal(error.param, 'model');
      assert.match(error.message, /python -m cortexstream pull gemma3/);
      assert.ok(error.message.includes(empty), error.message);
      return true;
    });
  } finally {
    if (saved === undefined) delete process.env.CORTEXSTREAM_CACHE;
    else process.env.CORTEXSTREAM_CACHE = saved;
    rmSync(empty, { recursive: true, force: true });
  }
});

test('a path is still a path: an existing one is used as given, a missing one fails naming it', () => {
  const file = path.join(modelsDir(), 'smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf');
  registry.register('by-path', file);
  assert.ok(registry.names().includes('by-path'));
  assert.throws(() => new Engine({ model: '/nonexistent/model.gguf' }), { code: 'model_load_error' });
});
