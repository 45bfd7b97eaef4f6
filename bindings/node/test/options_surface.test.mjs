// The typed surface of a request's options (`GenerateOptions` in index.d.ts) against the options
// the core reads: the same names (camelCase here), so a field added to the core without the
// typings, or the other way round, fails here. `signal` is JavaScript's own.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { openEngine } from './helpers.mjs';

const engine = openEngine();
after(() => engine.close());

const camelCase = (name) => name.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

function typedOptionNames() {
  const typings = readFileSync(new URL('../index.d.ts', import.meta.url), 'utf8');
  const body = typings.match(/export interface GenerateOptions \{([\s\S]*?)\n\}/)[1];
  const names = [...body.matchAll(/^ {2}(\w+)\?:/gm)].map((m) => m[1]);
  return new Set(names.filter((name) => name !== 'signal'));
}

async function coreOptionNames() {
  try {
    await engine.generate('Hi', { notAnOption: 1 });
  } catch (error) {
    const listed = error.message.match(/the options are (.*)$/);
    assert.ok(listed, error.message);
    return new Set(listed[1].split(', ').map(camelCase));
  }
  assert.fail('an unknown option was accepted');
}

test('index.d.ts names every option the core reads', async () => {
  assert.deepEqual([...typedOptionNames()].sort(), [...(await coreOptionNames())].sort());
});
