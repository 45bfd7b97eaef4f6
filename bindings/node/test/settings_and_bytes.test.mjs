// Issue 17 through the Node door: engine options out of range fail naming the option (item 8),
// and logprob `bytes` are each token's raw bytes even when it is part of a UTF-8 character
// (item 9).
import assert from 'node:assert/strict';
import { cpus } from 'node:os';
import { after, before, test } from 'node:test';
import { Engine } from '../index.js';
import { greedy, openEngine } from './helpers.mjs';

let engine;
before(() => {
  engine = openEngine({ embeddingModel: null });
});
after(() => engine.close());

/** `new Engine(options)` must throw naming `param` (camelCase) with the core's code. */
function assertRejected(options, param, code = 'invalid_request') {
  assert.throws(() => new Engine({ embeddingModel: null, ...options }), (error) => {
    assert.equal(error.param, param, `${error.message}`);
    assert.equal(error.code, code, `${error.message}`);
    return true;
  });
}

test('engine options out of range are errors naming the option', () => {
  assertRejected({ kvCacheTokens: Number.MAX_SAFE_INTEGER }, 'kvCacheTokens'); // more KV than memory
  assertRejected({ kvCacheTokens: 2 ** 40 }, 'kvCacheTokens');
  assertRejected({ kvCacheTokens: Infinity }, 'kvCacheTokens');
  assertRejected({ kvCacheTokens: -1 }, 'kvCacheTokens');
  assertRejected({ threads: 4 * cpus().length + 1 }, 'threads'); // at most 4 per CPU
  assertRejected({ threads: 2 ** 40 }, 'threads');
  assertRejected({ threads: NaN }, 'threads');
  assertRejected({ threads: 0 }, 'threads');
  assertRejected({ maxRunning: 1.5 }, 'maxRunning');
  assertRejected({ blockSize: 0 }, 'blockSize');
  assertRejected({ maxQueue: 0 }, 'maxQueue');
  assertRejected({ threads: 'many' }, 'threads');
  assertRejected({ maxBatchTokens: 2 ** 20 + 1 }, 'maxBatchTokens');
  for (const bad of [-1, NaN, Infinity, 10000.5]) assertRejected({ targetStepMs: bad }, 'targetStepMs');
  assertRejected({ targetStepMs: 'fast' }, 'targetStepMs');
  assertRejected({ logPrompts: 1 }, 'logPrompts');
  assertRejected({ maxPrefillTokens: 0 }, 'maxPrefillTokens');
});

test('a step target of 0 keeps a fixed budget; one in range adapts', async () => {
  for (const targetStepMs of [0, 20]) {
    const fixed = new Engine({ embeddingModel: null, kvCacheTokens: 512, targetStepMs });
    try {
      const completion = await fixed.generate('Hello', { ...greedy, maxTokens: 2 });
      assert.ok(completion.tokenIds.length >= 1);
    } finally {
      fixed.close();
    }
  }
});

/** Logprobs of one greedy token forced by a logit bias. */
async function forced(tokenId) {
  const completion = await engine.generate('The crab emoji is', {
    ...greedy, maxTokens: 1, logprobs: 2, logitBias: { [tokenId]: 100 },
  });
  assert.deepEqual(completion.tokenIds, [tokenId]);
  return completion.logprobs[0];
}

test('logprob bytes of tokens that are parts of one character spell its UTF-8 bytes', async () => {
  const crab = '\u{1F980}';
  const ids = engine.tokenize(crab);
  assert.ok(ids.length >= 2, `the emoji is one token: ${ids}`);
  const pieces = [];
  for (const id of ids) pieces.push(await forced(id));
  assert.deepEqual(Buffer.from(pieces.flatMap((p) => p.bytes)), Buffer.from(crab, 'utf8'));
  for (const piece of pieces) {
    assert.notDeepEqual(piece.bytes, [0xef, 0xbf, 0xbd], 'not U+FFFD');
    assert.throws(() => new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(piece.bytes)));
    assert.equal(piece.top[0].tokenId, piece.tokenId);
    assert.deepEqual(piece.top[0].bytes, piece.bytes);
  }
});
