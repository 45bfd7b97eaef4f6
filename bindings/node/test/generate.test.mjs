// Generation, streaming in both forms, option validation, tokenizer and embeddings.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { greedy, openEngine, reference } from './helpers.mjs';

let engine;
before(() => {
  engine = openEngine();
});
after(() => engine.close());

const fox = reference.raw_completion;
// llama.cpp's greedy ids up to the float64 forward's first near tie (the fixture's greedy_near_tie).
const clear = fox.greedy_clear_tokens;

describe('generate', () => {
  test('greedy "The quick brown fox" matches llama.cpp', async () => {
    const completion = await engine.generate(fox.prompt, { ...greedy, maxTokens: clear });
    assert.deepEqual(completion.tokenIds, fox.greedy_token_ids.slice(0, clear));
    assert.equal(completion.text, engine.detokenize(completion.tokenIds));
    assert.equal(completion.finishReason, 'length');
    const { promptTokens, completionTokens, totalTokens } = completion.usage;
    assert.deepEqual([promptTokens, completionTokens, totalTokens], [4, clear, 4 + clear]);
    assert.ok(completion.timings.totalNs >= completion.timings.timeToFirstTokenNs && completion.timings.timeToFirstTokenNs > 0);
    assert.equal(completion.logprobs, undefined);
  });

  test('token-id prompts generate the same as text', async () => {
    const completion = await engine.generate(fox.prompt_token_ids, { ...greedy, maxTokens: clear });
    assert.deepEqual(completion.tokenIds, fox.greedy_token_ids.slice(0, clear));
  });

  test('stop strings end the completion without being part of it', async () => {
    const full = await engine.generate(fox.prompt, { ...greedy, maxTokens: 12 });
    const completion = await engine.generate(fox.prompt, { ...greedy, maxTokens: 12, stop: 'brown' });
    assert.equal(completion.finishReason, 'stop');
    assert.equal(completion.text, full.text.slice(0, full.text.indexOf('brown')));
  });

  test('logprobs: one entry per token, the sampled token the most likely under greedy', async () => {
    const completion = await engine.generate(fox.prompt, { ...greedy, maxTokens: 4, logprobs: 3 });
    assert.equal(completion.logprobs.length, 4);
    completion.logprobs.forEach((entry, i) => {
      assert.equal(entry.tokenId, completion.tokenIds[i]);
      assert.equal(entry.top.length, 3);
      assert.equal(entry.top[0].tokenId, entry.tokenId);
      assert.ok(entry.logprob <= 0 && entry.logprob >= entry.top[2].logprob);
    });
  });

  test('chat renders the template and answers', async () => {
    const { messages, rendered } = reference.chat_template_prompt;
    assert.equal(engine.applyChatTemplate(messages), rendered);
    const completion = await engine.chat(messages, { temperature: 0, maxTokens: 16 });
    const viaTemplate = await engine.generate(engine.tokenize(rendered), { temperature: 0, maxTokens: 16 });
    assert.deepEqual(completion.tokenIds, viaTemplate.tokenIds);
    assert.ok(completion.text.length > 0);
  });
});

describe('streaming', () => {
  test('the completion comes from the engine, whatever a callback does to the chunks it sees', async () => {
    const expected = await engine.generate(fox.prompt, { ...greedy, maxTokens: 8, logprobs: 1 });
    const completion = await engine.streamWithCallback(fox.prompt, { ...greedy, maxTokens: 8, logprobs: 1 }, (chunk) => {
      // A caller is free to reuse the objects it is given; the result must not depend on them.
      chunk.text = 'X';
      chunk.tokenId = undefined;
      chunk.logprobs = undefined;
      chunk.usage = undefined;
    });
    assert.equal(completion.text, expected.text);
    assert.deepEqual(completion.tokenIds, expected.tokenIds);
    assert.deepEqual(completion.logprobs.map((l) => l.tokenId), expected.tokenIds);
    assert.deepEqual(completion.usage, expected.usage);
  });

  test('logprobs requested but no token generated: an empty list, not undefined', async () => {
    const stream = engine.stream(fox.prompt, { ...greedy, maxTokens: 64, logprobs: 1 });
    stream.cancel();
    const completion = await stream.completion;
    assert.equal(completion.finishReason, 'cancelled');
    assert.ok(Array.isArray(completion.logprobs));
    assert.equal(completion.logprobs.length, completion.tokenIds.length);
  });

  test('async-iterator chunks join to the generate() text', async () => {
    const options = { ...greedy, maxTokens: 24 };
    const expected = await engine.generate(fox.prompt, options);
    const chunks = [];
    for await (const chunk of engine.stream(fox.prompt, options)) chunks.push(chunk);
    const last = chunks.pop();
    assert.equal(last.finishReason, 'length');
    assert.equal(last.usage.completionTokens, 24);
    assert.ok(chunks.every((chunk) => chunk.finishReason === undefined));
    assert.equal(chunks.map((chunk) => chunk.text).join(''), expected.text);
    assert.deepEqual(chunks.map((chunk) => chunk.tokenId), expected.tokenIds);
  });

  test('the callback sees every chunk, in order, before the promise resolves', async () => {
    const options = { ...greedy, maxTokens: 24 };
    const seen = [];
    const completion = await engine.streamWithCallback(fox.prompt, options, (chunk) => seen.push(chunk));
    assert.equal(seen.length, 25);
    assert.equal(seen.at(-1).finishReason, 'length');
    assert.equal(seen.map((chunk) => chunk.text).join(''), completion.text);
    assert.deepEqual(completion.tokenIds.slice(0, clear), fox.greedy_token_ids.slice(0, clear));
  });

  test('a stream also exposes its completion', async () => {
    const stream = engine.stream(fox.prompt, { ...greedy, maxTokens: 6 });
    let text = '';
    for await (const chunk of stream) text += chunk.text;
    assert.equal((await stream.completion).text, text);
  });
});

describe('invalid options', () => {
  const cases = [
    [{ temperature: -1 }, 'temperature'],
    [{ topP: 0 }, 'topP'],
    [{ maxTokens: -1 }, 'maxTokens'],
    [{ stopTokenIds: [49152] }, 'stopTokenIds'],
    [{ logprobs: 21 }, 'logprobs'],
  ];
  for (const [options, param] of cases) {
    test(`${JSON.stringify(options)} rejects naming ${param}`, async () => {
      await assert.rejects(engine.generate('hello', options), (error) => {
        assert.ok(error instanceof Error);
        assert.equal(error.code, 'invalid_request');
        assert.equal(error.param, param);
        assert.match(error.message, /^invalid value for `\w+`: /);
        return true;
      });
    });
  }

  test('the engine counts rejected requests', async () => {
    const rejectedBefore = engine.metrics().requestsRejected;
    await assert.rejects(engine.generate('hello', { temperature: -1 }), { code: 'invalid_request' });
    assert.equal(engine.metrics().requestsRejected, rejectedBefore + 1);
  });

  test('prompt tokens are counted once, as prefix-cache hits or as prefill', async () => {
    const prompt = 'You are a careful assistant who counts things. '.repeat(8);
    const before = engine.metrics();
    const first = await engine.generate(prompt, { ...greedy, maxTokens: 2 });
    const second = await engine.generate(prompt, { ...greedy, maxTokens: 2 });
    const after = engine.metrics();
    const moved = (key) => after[key] - before[key];
    assert.equal(moved('promptTokensTotal'), first.usage.promptTokens + second.usage.promptTokens);
    assert.ok(moved('prefixCacheHitTokens') > 0, 'the repeat was served from the cache');
    assert.equal(moved('prefixCacheHitTokens') + moved('prefillTokensTotal'), moved('promptTokensTotal'));
    assert.equal(moved('recomputedTokensTotal'), 0);
    assert.ok(after.stepTokenBudget > 0, `stepTokenBudget ${after.stepTokenBudget}`);
  });

  test('an empty prompt and an over-long prompt are rejected with their codes', async () => {
    await assert.rejects(engine.generate(''), { code: 'invalid_request', param: 'prompt' });
    const tooLong = new Array(engine.modelInfo.contextLength).fill(fox.prompt_token_ids[0]);
    await assert.rejects(engine.generate(tooLong), { code: 'context_length_exceeded' });
  });

  test('a fraction or an unsafe integer where a count belongs is invalid, naming the option', async () => {
    // The core reads the options: the same code and wording as the Python, C and REST doors.
    for (const [maxTokens, wording] of [[2.5, 'floating point `2.5`'], [2 ** 64, 'floating point']]) {
      await assert.rejects(engine.generate('hello', { maxTokens }), (error) => {
        assert.equal(error.code, 'invalid_request', error.message);
        assert.equal(error.param, 'maxTokens');
        assert.ok(error.message.includes(wording), error.message);
        return true;
      });
    }
  });

  test('an unknown option is named, and `signal` is not one', async () => {
    await assert.rejects(engine.generate('hello', { maxTokenz: 2 }), (error) => {
      assert.equal(error.code, 'invalid_request');
      assert.ok(error.message.includes('unknown option `max_tokenz`'), error.message);
      return true;
    });
    const completion = await engine.generate('hello', { maxTokens: 1, signal: new AbortController().signal });
    assert.equal(completion.tokenIds.length, 1);
  });

  test('a stream with invalid options fails when iterated', async () => {
    const stream = engine.stream('hello', { temperature: -1 });
    await assert.rejects(async () => {
      for await (const chunk of stream) assert.fail(`unexpected chunk ${JSON.stringify(chunk)}`);
    }, { code: 'invalid_request', param: 'temperature' });
  });
});

describe('tokenizer and model info', () => {
  test('tokenize matches llama.cpp and detokenize inverts it', () => {
    const { text, token_ids: ids } = reference.tokenization;
    assert.deepEqual(engine.tokenize(text), ids);
    assert.equal(engine.detokenize(ids), text);
  });

  test('modelInfo describes both models', () => {
    const info = engine.modelInfo;
    assert.equal(info.architecture, 'llama');
    assert.equal(info.vocabSize, 49152);
    assert.equal(info.contextLength, 4096); // capped by kvCacheTokens
    assert.equal(info.embedding.dim, 384);
  });
});

describe('embeddings', () => {
  test('384-dimensional unit vectors, closer for similar sentences', async () => {
    const texts = ['A cat sits on the mat.', 'A kitten is resting on a rug.', 'Stock markets fell sharply today.'];
    const vectors = await engine.embed(texts);
    assert.equal(vectors.length, 3);
    const dot = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0);
    for (const vector of vectors) {
      assert.equal(vector.length, 384);
      assert.ok(Math.abs(Math.sqrt(dot(vector, vector)) - 1) < 1e-5);
    }
    assert.ok(dot(vectors[0], vectors[1]) > dot(vectors[0], vectors[2]) + 0.2);
    assert.deepEqual(await engine.embed(texts[0]), [vectors[0]]);
  });
});
