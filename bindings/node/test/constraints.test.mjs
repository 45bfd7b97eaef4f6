// Constrained decoding through the Node addon (issue 20): jsonSchema (object or JSON text),
// regex, grammar, choices and OpenAI's responseFormat; bad constraints reject naming the option.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { openEngine } from './helpers.mjs';

const engine = openEngine();
after(() => engine.close());

const ask = [{ role: 'user', content: 'Give your name and age as a JSON object.' }];
const person = {
  type: 'object',
  properties: { name: { type: 'string', maxLength: 10 }, age: { type: 'integer', minimum: 0, maximum: 120 } },
  required: ['name', 'age'],
  additionalProperties: false,
};

function assertPerson(text) {
  const value = JSON.parse(text);
  assert.deepEqual(Object.keys(value).sort(), ['age', 'name']);
  assert.ok(typeof value.name === 'string' && value.name.length <= 10, text);
  assert.ok(Number.isInteger(value.age) && value.age >= 0 && value.age <= 120, text);
}

test('a JSON schema (object, JSON text or responseFormat) constrains the output', async () => {
  for (const options of [
    { jsonSchema: person, temperature: 0 },
    { jsonSchema: JSON.stringify(person), temperature: 1, seed: 3 },
    { responseFormat: { type: 'json_schema', json_schema: { name: 'p', schema: person, strict: true } }, temperature: 0 },
  ]) {
    const completion = await engine.chat(ask, { maxTokens: 60, ...options });
    assert.equal(completion.finishReason, 'stop', completion.text);
    assertPerson(completion.text);
  }
});

test('regex, grammar and choices constrain the output', async () => {
  const date = await engine.chat(ask, { regex: '[0-9]{4}-[0-9]{2}', temperature: 1, seed: 2, maxTokens: 12 });
  assert.match(date.text, /^[0-9]{4}-[0-9]{2}$/);
  const lark = await engine.chat(ask, { grammar: 'start: "n=" /[0-9]/', temperature: 1, seed: 4, maxTokens: 8 });
  assert.match(lark.text, /^n=[0-9]$/);
  const pick = await engine.chat(ask, { choices: ['alpha', 'beta'], temperature: 1, seed: 5, maxTokens: 8 });
  assert.ok(['alpha', 'beta'].includes(pick.text), pick.text);
  assert.equal(pick.finishReason, 'stop');
});

test('bad constraints reject naming the option', async () => {
  const cases = [
    [{ jsonSchema: '{not json' }, 'jsonSchema'],
    [{ regex: '(unclosed' }, 'regex'],
    [{ grammar: 'start: nowhere' }, 'grammar'],
    [{ choices: [] }, 'choices'],
    [{ responseFormat: { type: 'yaml' } }, 'responseFormat'],
    [{ regex: 'a', choices: ['a'] }, 'choices'],
  ];
  for (const [options, param] of cases) {
    await assert.rejects(engine.generate('Hi', { maxTokens: 4, ...options }), (error) => {
      assert.equal(error.code, 'invalid_request', `${JSON.stringify(options)}: ${error.message}`);
      assert.equal(error.param, param, `${JSON.stringify(options)}: ${error.message}`);
      return true;
    });
  }
  // Wrong types too are the core's invalid_request, as at every other door.
  for (const [options, param] of [[{ jsonSchema: 3 }, 'jsonSchema'], [{ choices: 'ab' }, 'choices'], [{ regex: 1 }, 'regex']]) {
    await assert.rejects(engine.generate('Hi', options), { code: 'invalid_request', param });
  }
});
