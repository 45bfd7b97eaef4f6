// A model without a chat template refuses chat with code `chat_template_missing` (no guessed
// format), keeps serving plain text, and chats with the `chatTemplate` option (issue 16 item 5).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Engine, modelsDir } from '../index.js';

// SmolLM2 with its `tokenizer.chat_template` key renamed (same length: the layout is unchanged).
const folder = mkdtempSync(path.join(tmpdir(), 'cortexstream-node-base-'));
const baseModel = path.join(folder, 'base-model.gguf');
const original = readFileSync(path.join(modelsDir(), 'smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf'));
const key = Buffer.from('tokenizer.chat_template');
const at = original.indexOf(key);
assert.ok(at >= 0 && original.indexOf(key, at + 1) < 0, 'the model has exactly one chat template key');
original[at + key.length - 1] = 'X'.charCodeAt(0);
writeFileSync(baseModel, original);

const template =
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" +
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
const messages = [{ role: 'user', content: 'Hi' }];
const options = { model: baseModel, embeddingModel: false, kvCacheTokens: 512 };
const base = new Engine(options);
const withTemplate = new Engine({ ...options, chatTemplate: template });
after(async () => {
  await base.close();
  await withTemplate.close();
  rmSync(folder, { recursive: true, force: true });
});

test('chat without a template fails with chat_template_missing, naming the option', async () => {
  await assert.rejects(base.chat(messages, { maxTokens: 2 }), (error) => {
    assert.equal(error.code, 'chat_template_missing');
    assert.equal(error.param, 'messages');
    assert.match(error.message, /tokenizer\.chat_template/);
    assert.match(error.message, /`chat_template`/);
    return true;
  });
  assert.throws(() => base.applyChatTemplate(messages), { code: 'chat_template_missing' });
});

test('plain completion still works without a template', async () => {
  const completion = await base.generate('The capital of France is', { maxTokens: 2, temperature: 0 });
  assert.ok(completion.usage.completionTokens >= 1);
});

test('the chatTemplate option serves chat', async () => {
  assert.equal(withTemplate.applyChatTemplate(messages), '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
  const completion = await withTemplate.chat(messages, { maxTokens: 2, temperature: 0 });
  assert.ok(completion.usage.completionTokens >= 1);
});
