// Streams a completion to the console twice: with a callback, then with `for await`.
//
//   bindings/node/build.sh && node examples/node/stream.mjs ["your prompt"]
//
// Ctrl-C aborts the request in the engine through an AbortSignal.
import { Engine } from '../../bindings/node/index.js';

const prompt = process.argv[2] ?? 'Write a short poem about the sea.';
const engine = new Engine();
const controller = new AbortController();
process.once('SIGINT', () => controller.abort());
const options = { maxTokens: 128, temperature: 0.7, seed: 42, signal: controller.signal };
const messages = [{ role: 'user', content: prompt }];

try {
  console.log('--- callback');
  const completion = await engine.streamWithCallback(engine.applyChatTemplate(messages), options, (chunk) => {
    process.stdout.write(chunk.text);
  });
  const { completionTokens } = completion.usage;
  const seconds = completion.timings.totalNs / 1e9;
  console.log(`\n[${completion.finishReason}: ${completionTokens} tokens in ${seconds.toFixed(2)} s]`);

  console.log('--- async iterator');
  for await (const chunk of engine.streamChat(messages, options)) {
    process.stdout.write(chunk.finishReason ? `\n[${chunk.finishReason}]\n` : chunk.text);
  }
} catch (error) {
  if (error.name !== 'AbortError') throw error;
  console.log('\n[aborted]');
} finally {
  await engine.close();
}
