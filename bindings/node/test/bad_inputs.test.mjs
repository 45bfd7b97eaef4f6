// The bad-input matrix (tests/hardening/bad_inputs.json), Node door: every case for "node"
// fails with the right `code`/`param` (or TypeError for a prompt or messages of the wrong type,
// checked before the addon), accepted ones give their exact greedy
// text, and after each case the canary request still gets its exact text.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { openEngine } from './helpers.mjs';

const matrix = JSON.parse(
  readFileSync(new URL('../../../tests/hardening/bad_inputs.json', import.meta.url), 'utf8'),
);
const engine = openEngine();
after(() => engine.close());

const camelCase = (name) => name.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

/** Resolves the matrix's special values ($float, $repeat, $bytes_hex). */
function resolve(value) {
  if (Array.isArray(value)) return value.map(resolve);
  if (value === null || typeof value !== 'object') return value;
  if ('$float' in value) return { nan: NaN, inf: Infinity, '-inf': -Infinity }[value.$float];
  if ('$repeat' in value) return value.$repeat.text.repeat(value.$repeat.times);
  if ('$bytes_hex' in value) return Buffer.from(value.$bytes_hex.replace(/\s/g, ''), 'hex');
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, resolve(v)]));
}

/** Runs one case's request through the Node API; resolves to the completion. */
async function run(kind, request) {
  const fields = resolve(request);
  if (kind === 'embed') return engine.embed(fields.input);
  const { prompt, prompt_tokens: promptTokens, messages, logit_bias: logitBias, ...rest } = fields;
  const options = Object.fromEntries(Object.entries(rest).map(([k, v]) => [camelCase(k), v]));
  if (logitBias !== undefined) options.logitBias = logitBias;
  if (messages !== undefined) return engine.chat(messages, options);
  return engine.generate(promptTokens ?? prompt, options);
}

async function checkCanary() {
  const { request, expect } = matrix.canary;
  const completion = await run('generate', request);
  assert.equal(completion.text, expect.text, 'the canary after a bad request');
  assert.equal(completion.finishReason, expect.finish_reason);
}

for (const testCase of matrix.cases.filter((c) => c.doors.includes('node'))) {
  test(testCase.id, async () => {
    const { expect } = testCase;
    if (expect.error !== undefined) {
      await assert.rejects(run(testCase.kind, testCase.request), (error) => {
        if (expect.error === 'type_error') {
          assert.ok(error instanceof TypeError, `expected a TypeError, got ${error}`);
        } else {
          assert.equal(error.code, expect.error, String(error));
        }
        assert.equal(error.param, camelCase(expect.param), String(error));
        for (const part of expect.message_contains ?? []) assert.ok(error.message.includes(part), error.message);
        return true;
      });
    } else {
      const completion = await run(testCase.kind, testCase.request);
      if ('text' in expect) assert.equal(completion.text, expect.text);
      if ('text_not_equal' in expect) assert.notEqual(completion.text, expect.text_not_equal);
      assert.equal(completion.finishReason, expect.finish_reason);
    }
    await checkCanary();
  });
}
