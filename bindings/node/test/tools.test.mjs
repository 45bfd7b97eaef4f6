// Tool calling through the Node addon (issue 20): `tools` / `toolChoice` / `parallelToolCalls`
// on chat requests; SmolLM2's template has no tool syntax, so the generic JSON form is used and,
// with a required or named choice, constrained: the calls' arguments validate. Streams carry
// the calls in chunks; malformed tools reject naming the field before anything is queued.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { openEngine } from './helpers.mjs';

const engine = openEngine();
after(() => engine.close());

const ask = [{ role: 'user', content: 'What is the weather in Paris?' }];
const weather = {
  type: 'function',
  function: {
    name: 'get_weather',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string', maxLength: 20 }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
      required: ['city', 'unit'],
      additionalProperties: false,
    },
  },
};
const time = {
  type: 'function',
  function: {
    name: 'get_time',
    parameters: { type: 'object', properties: { hours: { type: 'integer', minimum: 0, maximum: 23 } }, required: ['hours'], additionalProperties: false },
  },
};

function assertValidCall(call) {
  assert.match(call.id, /^[A-Za-z0-9]{9}$/);
  const args = JSON.parse(call.arguments);
  if (call.name === 'get_weather') {
    assert.deepEqual(Object.keys(args).sort(), ['city', 'unit']);
    assert.ok(typeof args.city === 'string' && args.city.length <= 20);
    assert.ok(['celsius', 'fahrenheit'].includes(args.unit));
  } else {
    assert.equal(call.name, 'get_time');
    assert.ok(Number.isInteger(args.hours) && args.hours >= 0 && args.hours <= 23, call.arguments);
  }
}

test('a required choice returns a call that validates, then the result round-trips', async () => {
  const first = await engine.chat(ask, { tools: [weather, time], toolChoice: 'required', parallelToolCalls: false, temperature: 0, maxTokens: 120 });
  assert.equal(first.finishReason, 'tool_calls', first.text);
  assert.equal(first.toolCalls.length, 1);
  assertValidCall(first.toolCalls[0]);
  const [call] = first.toolCalls;
  const history = [
    ...ask,
    { role: 'assistant', content: null, toolCalls: [{ id: call.id, type: 'function', function: { name: call.name, arguments: call.arguments } }] },
    { role: 'tool', toolCallId: call.id, name: call.name, content: '22 degrees' },
  ];
  const answer = await engine.chat(history, { tools: [weather, time], toolChoice: 'none', temperature: 0, maxTokens: 8 });
  assert.equal(answer.toolCalls, undefined); // toolChoice 'none': the answer is not parsed for calls
  assert.ok(['stop', 'length'].includes(answer.finishReason));
});

test('a named choice calls that function; streamed chunks carry the same call', async () => {
  const options = { tools: [weather, time], toolChoice: { type: 'function', function: { name: 'get_time' } }, temperature: 0, maxTokens: 120 };
  const whole = await engine.chat(ask, options);
  assert.deepEqual(whole.toolCalls.map((c) => c.name), ['get_time']);
  assertValidCall(whole.toolCalls[0]);
  const streamed = [];
  let text = '';
  let finishReason;
  for await (const chunk of engine.streamChat(ask, options)) {
    streamed.push(...(chunk.toolCalls ?? []));
    text += chunk.text;
    finishReason = chunk.finishReason ?? finishReason;
  }
  assert.equal(finishReason, 'tool_calls');
  assert.equal(text, '');
  assert.deepEqual(streamed.map((c) => [c.name, c.arguments]), whole.toolCalls.map((c) => [c.name, c.arguments]));
});

test('malformed tools reject naming the field', async () => {
  const cases = [
    [{ tools: [{ type: 'function', function: { description: 'no name' } }] }, 'tools', 'tools[0].function.name'],
    [{ tools: [{ type: 'function', function: { name: 'f', parameters: 3 } }] }, 'tools', 'tools[0].function.parameters'],
    [{ tools: [weather], toolChoice: { type: 'function', function: { name: 'nope' } } }, 'toolChoice', '`nope`'],
    [{ toolChoice: 'required' }, 'toolChoice', 'tools'],
  ];
  for (const [options, param, fragment] of cases) {
    await assert.rejects(engine.chat(ask, { maxTokens: 4, ...options }), (error) => {
      assert.equal(error.code, 'invalid_request');
      assert.equal(error.param, param);
      assert.ok(error.message.includes(fragment), error.message);
      return true;
    });
  }
  await assert.rejects(engine.chat([...ask, { role: 'tool', content: '22' }], { tools: [weather], maxTokens: 4 }), (error) => {
    assert.equal(error.param, 'messages');
    assert.ok(error.message.includes('messages[1].tool_call_id'), error.message);
    return true;
  });
});
