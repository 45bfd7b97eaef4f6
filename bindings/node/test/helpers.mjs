// Shared by the test files: one engine per file, the llama.cpp reference, small waits.
import { readFileSync } from 'node:fs';
import { Engine } from '../index.js';

/** A smaller KV cache than the default keeps several test processes light. */
export function openEngine(options = {}) {
  return new Engine({ kvCacheTokens: 4096, ...options });
}

/** llama.cpp's outputs on the same model (tests/fixtures/smollm2_reference.json). */
export const reference = JSON.parse(
  readFileSync(new URL('../../../tests/fixtures/smollm2_reference.json', import.meta.url), 'utf8'),
);

/** Greedy and deterministic, long enough to be cancelled mid-way. */
export const greedy = { temperature: 0, ignoreEos: true };

/** Resolves once `predicate()` holds; fails after `timeoutMs`. */
export async function waitFor(predicate, timeoutMs = 2000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms: ${predicate}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
