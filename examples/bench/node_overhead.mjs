// How much does streaming through Node cost per token, compared with the core alone?
// The Node twin of python_overhead.py, with the same two numbers:
//
// 1. Live streaming: the mean gap between consecutive token chunks as a JavaScript consumer
//    sees them (`for await` and the callback API), against the per-token time the core
//    measured for the same request (`timings.perTokenNs`). The difference is what the addon
//    adds on the hot path.
// 2. Delivery cost: the time to hand one already-generated chunk to JavaScript, i.e. the
//    pure binding overhead with no model time mixed in.
//
//   bindings/node/build.sh && node examples/bench/node_overhead.mjs [--tokens 256] [--runs 3]
import { parseArgs } from 'node:util';

import { Engine } from '../../bindings/node/index.js';

const PROMPT = 'Write a long story about a lighthouse keeper.';
const { values } = parseArgs({
  options: { tokens: { type: 'string', default: '256' }, runs: { type: 'string', default: '3' } },
});
const tokens = Number(values.tokens);
const runs = Number(values.runs);
const options = { maxTokens: tokens, temperature: 0, ignoreEos: true };

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const gapsOf = (arrivals) => arrivals.slice(1).map((t, i) => Number(t - arrivals[i]));

/** [mean gap between token chunks, core per-token time] in ns, through `for await`. */
async function liveIterator(engine) {
  const arrivals = [];
  const stream = engine.stream(PROMPT, options);
  for await (const chunk of stream) {
    if (chunk.tokenId !== undefined) arrivals.push(process.hrtime.bigint());
  }
  return [mean(gapsOf(arrivals)), (await stream.completion).timings.perTokenNs];
}

/** The same through the callback API. */
async function liveCallback(engine) {
  const arrivals = [];
  const completion = await engine.streamWithCallback(PROMPT, options, (chunk) => {
    if (chunk.tokenId !== undefined) arrivals.push(process.hrtime.bigint());
  });
  return [mean(gapsOf(arrivals)), completion.timings.perTokenNs];
}

/** ns per chunk to drain a stream whose request has already finished. */
async function deliveryIterator(engine) {
  const finishedBefore = engine.metrics().requestsFinished;
  const stream = engine.stream(PROMPT, options);
  while (engine.metrics().requestsFinished === finishedBefore) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const start = process.hrtime.bigint();
  let count = 0;
  for await (const _chunk of stream) count += 1;
  return Number(process.hrtime.bigint() - start) / count;
}

const engine = new Engine({ embeddingModel: false });
try {
  await engine.generate(PROMPT, { maxTokens: 8 }); // warm up
  const report = (name, live) => {
    const gap = median(live.map(([g]) => g));
    const core = median(live.map(([, c]) => c));
    const overhead = gap - core;
    console.log(`${name.padEnd(31)}${(gap / 1e3).toFixed(1).padStart(9)} us`);
    console.log(
      `  streaming overhead           ${(overhead / 1e3).toFixed(1).padStart(9)} us/token ` +
        `(${overhead >= 0 ? '+' : ''}${((gap / core - 1) * 100).toFixed(2)}%)`,
    );
    return core;
  };
  const iterator = [];
  const callback = [];
  for (let i = 0; i < runs; i++) {
    iterator.push(await liveIterator(engine));
    callback.push(await liveCallback(engine));
  }
  const delivery = [];
  for (let i = 0; i < runs; i++) delivery.push(await deliveryIterator(engine));

  console.log(`tokens per request             ${tokens} (median of ${runs} runs)`);
  const core = median(iterator.map(([, c]) => c));
  console.log(`core per-token time            ${(core / 1e3).toFixed(1).padStart(9)} us`);
  report('for await per-token gap', iterator);
  report('callback per-token gap', callback);
  console.log(`delivery of a buffered chunk   ${(median(delivery) / 1e3).toFixed(2).padStart(9)} us (for await)`);
} finally {
  await engine.close();
}
