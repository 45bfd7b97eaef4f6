// The core's log records reach a JavaScript listener with their fields; a throwing listener
// does not break generation.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { setLogListener } from '../index.js';
import { openEngine, waitFor } from './helpers.mjs';

const engine = openEngine();
after(async () => {
  setLogListener(null);
  await engine.close();
});

const PROMPT = 'The secret ingredient of the soup is';

test("a request's records arrive with its tag and fields", async () => {
  const records = [];
  setLogListener((record) => records.push(record), 'debug');
  const done = await engine.generate(PROMPT, { maxTokens: 3, temperature: 0, tag: 'node-1' });
  await waitFor(() => records.some((r) => r.message === 'finished' && r.fields.tag === 'node-1'), 10000);
  setLogListener(null);
  const ours = records.filter((r) => r.fields.tag === 'node-1');
  assert.deepEqual(ours.map((r) => r.message), ['queued', 'prefill start', 'first token', 'finished']);
  assert.equal(new Set(ours.map((r) => r.fields.request_id)).size, 1);
  const finished = ours.at(-1);
  assert.equal(finished.level, 'info');
  assert.equal(ours[2].level, 'debug');
  assert.equal(finished.target, 'cortexstream::request');
  assert.equal(finished.fields.reason, 'length');
  assert.equal(finished.fields.completion_tokens, done.usage.completionTokens);
  assert.ok(!JSON.stringify(records).includes('secret ingredient'));
});

test('a throwing listener does not break generation', async () => {
  const warnings = [];
  const onWarning = (warning) => warnings.push(warning);
  process.on('warning', onWarning);
  let calls = 0;
  setLogListener(() => {
    calls += 1;
    throw new Error('a broken log listener');
  }, 'info');
  const first = await engine.generate(PROMPT, { maxTokens: 4, temperature: 0 });
  const second = await engine.generate(PROMPT, { maxTokens: 4, temperature: 0 });
  await waitFor(() => calls >= 4 && warnings.length >= 4, 10000);
  setLogListener(null);
  process.off('warning', onWarning);
  assert.equal(first.finishReason, 'length');
  assert.equal(first.text, second.text);
  assert.match(String(warnings[0].message), /a broken log listener/);
});

test('bad listeners, levels and tags are refused naming them', async () => {
  assert.throws(() => setLogListener(() => {}, 'loud'), (e) => e.param === 'level');
  assert.throws(() => setLogListener(42), TypeError);
  await assert.rejects(engine.generate(PROMPT, { tag: 5 }), (e) => e.param === 'tag');
});
