// Many requests at once: they batch together and each gets what it would get alone.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { greedy, openEngine, waitFor } from './helpers.mjs';

let engine;
before(() => {
  engine = openEngine();
});
after(() => engine.close());

const prompts = [
  'The quick brown fox',
  'Once upon a time',
  'The capital of France is',
  'def fibonacci(n):',
  'My favourite colour is',
  'In 1969, the first humans',
  'Water boils at',
  'The best way to learn a language is',
];

test('8 concurrent streams all finish, each as it would alone, in batched steps', async () => {
  const options = { ...greedy, maxTokens: 16 };
  const alone = [];
  for (const prompt of prompts) alone.push((await engine.generate(prompt, options)).text);

  const stepsBefore = engine.metrics().steps;
  const collect = async (prompt) => {
    let text = '';
    for await (const chunk of engine.stream(prompt, options)) text += chunk.text;
    return text;
  };
  const together = await Promise.all(prompts.map(collect));

  assert.deepEqual(together, alone);
  // Alone, 8 requests of 16 tokens take at least 8 * 16 steps; batched, about 16.
  const steps = engine.metrics().steps - stepsBefore;
  assert.ok(steps < 4 * 16, `${steps} steps for ${prompts.length} concurrent requests`);
  // The engine publishes its gauges just after sending the last chunks.
  await waitFor(() => engine.metrics().running === 0);
});
