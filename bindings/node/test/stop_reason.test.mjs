// Which stop ended a request (`stopReason`) on completions and on the last streamed chunk.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { greedy, openEngine, reference } from './helpers.mjs';

let engine;
before(() => {
  engine = openEngine();
});
after(() => engine.close());

const fox = reference.raw_completion; // greedy: " with a quick brown bear..."

/** The fields a StopReason carries, absent ones as undefined. */
const reason = ({ kind, tokenId, stopString }) => ({ kind, tokenId: tokenId ?? undefined, stopString: stopString ?? undefined });

describe('stopReason', () => {
  test('names the stop string that ended the request, on the completion and the last chunk', async () => {
    // "quick" completes first although "bear" is listed first.
    const options = { ...greedy, maxTokens: 24, stop: ['bear', 'never', 'quick'] };
    const completion = await engine.generate(fox.prompt, options);
    assert.equal(completion.finishReason, 'stop');
    assert.deepEqual(reason(completion.stopReason), { kind: 'stop_string', tokenId: undefined, stopString: 'quick' });
    const chunks = [];
    for await (const chunk of engine.stream(fox.prompt, options)) chunks.push(chunk);
    assert.deepEqual(reason(chunks.at(-1).stopReason), reason(completion.stopReason));
    assert.ok(chunks.slice(0, -1).every((c) => c.stopReason == null));
  });

  test('names a stop token id', async () => {
    const third = fox.greedy_token_ids[2];
    const completion = await engine.generate(fox.prompt, { ...greedy, maxTokens: 24, stopTokenIds: [third] });
    assert.equal(completion.finishReason, 'stop');
    assert.deepEqual(reason(completion.stopReason), { kind: 'stop_token', tokenId: third, stopString: undefined });
    assert.equal(completion.tokenIds.at(-1), third);
  });

  test('reports the end-of-generation token as eos with its id, and length as length', async () => {
    const messages = [{ role: 'user', content: 'Say hello.' }];
    const completion = await engine.chat(messages, { temperature: 0, maxTokens: 64 });
    assert.equal(completion.finishReason, 'stop', completion.text);
    assert.deepEqual(reason(completion.stopReason), { kind: 'eos', tokenId: completion.tokenIds.at(-1), stopString: undefined });
    const short = await engine.generate(fox.prompt, { ...greedy, maxTokens: 3 });
    assert.deepEqual([short.finishReason, reason(short.stopReason)], ['length', { kind: 'length', tokenId: undefined, stopString: undefined }]);
  });
});
