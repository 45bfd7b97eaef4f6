// The typed engine settings (`EngineSettings` in index.d.ts) against the settings the core reads
// (`EngineConfig::setting_names`): the same names, camelCase here, so a setting added to the core
// without the typings, or the other way round, fails here. No model is loaded: an unknown name is
// refused before.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Engine } from '../index.js';

const camelCase = (name) => name.replace(/_([a-z])/g, (_, c) => c.toUpperCase());

function typedSettingNames() {
  const typings = readFileSync(new URL('../index.d.ts', import.meta.url), 'utf8');
  const body = typings.match(/export interface EngineSettings \{([\s\S]*?)\n\}/)[1];
  return new Set([...body.matchAll(/^ {2}(\w+)\?:/gm)].map((m) => m[1]));
}

function coreSettingNames() {
  try {
    new Engine({ embeddingModel: null, notASetting: 1 });
  } catch (error) {
    assert.equal(error.code, 'invalid_request', error.message);
    assert.match(error.message, /unknown setting `not_a_setting`/);
    const listed = error.message.match(/the settings are (.*)$/);
    assert.ok(listed, error.message);
    return new Set(listed[1].split(', ').map(camelCase));
  }
  assert.fail('an unknown setting was accepted');
}

test('index.d.ts names every engine setting the core reads', () => {
  assert.deepEqual([...typedSettingNames()].sort(), [...coreSettingNames()].sort());
});

test('a setting of the wrong type is refused naming it in camelCase', () => {
  assert.throws(() => new Engine({ embeddingModel: null, logPrompts: 'yes' }), {
    code: 'invalid_request',
    param: 'logPrompts',
  });
});

test('an unknown KV cache type is refused naming kvCacheType', () => {
  assert.throws(() => new Engine({ embeddingModel: null, kvCacheType: 'q4_0' }), {
    code: 'invalid_request',
    param: 'kvCacheType',
    message: /"f16", "q8_0"/,
  });
});
