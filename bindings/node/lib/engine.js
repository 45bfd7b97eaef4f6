'use strict';
// The public `Engine`: promises, async iteration and AbortSignal over the native engine.
const { NativeEngine } = require('./native');
const { withDefaultModels } = require('./models');
const { runRequest, ChunkStream } = require('./request');
const { checkPrompt, checkMessages, checkEngineOptions } = require('./validate');

/** Key of the constructor option that wraps an existing native engine (a registry's). */
const fromNative = Symbol('fromNative');

class Engine {
  #native;

  constructor(options = {}) {
    if (options !== null && typeof options === 'object' && options[fromNative]) {
      this.#native = options[fromNative];
      return;
    }
    checkEngineOptions(options);
    this.#native = new NativeEngine(withDefaultModels(options));
  }

  generate(prompt, options) {
    return runRequest(this.#submit(prompt, options), options).completion;
  }

  chat(messages, options) {
    return runRequest(this.#submitChat(messages, options), options).completion;
  }

  stream(prompt, options) {
    return new ChunkStream(this.#submit(prompt, options), options);
  }

  streamChat(messages, options) {
    return new ChunkStream(this.#submitChat(messages, options), options);
  }

  streamWithCallback(prompt, options, callback) {
    if (typeof options === 'function') [options, callback] = [undefined, options];
    return runRequest(this.#submit(prompt, options), options, callback).completion;
  }

  async embed(texts) {
    return this.#native.embed(typeof texts === 'string' ? [texts] : texts);
  }

  tokenize(text, addSpecialTokens = false) {
    return this.#native.tokenize(text, addSpecialTokens);
  }

  detokenize(ids) {
    return this.#native.detokenize(ids);
  }

  applyChatTemplate(messages, addGenerationPrompt = true) {
    return this.#native.applyChatTemplate(messages, addGenerationPrompt);
  }

  get modelInfo() {
    return this.#native.modelInfo;
  }

  metrics() {
    return this.#native.metrics();
  }

  get closed() {
    return this.#native.closed;
  }

  async close() {
    return this.#native.close();
  }

  // Type checks run inside the submit, so they fail exactly like the core's own validation
  // (a rejected promise for `generate`, a throw from `stream`).
  #submit(prompt, options) {
    return (onChunk) => {
      checkPrompt(prompt);
      return this.#native.submit(prompt, samplingOptions(options), onChunk);
    };
  }

  #submitChat(messages, options) {
    return (onChunk) => {
      checkMessages(messages);
      return this.#native.submitChat(messages, samplingOptions(options), onChunk);
    };
  }
}

/** The options the core reads: all but `signal`, which `runRequest` handles. */
function samplingOptions(options) {
  if (options === null || typeof options !== 'object') return options;
  const { signal, ...sampling } = options;
  return sampling;
}

/** The public engine over a native one a registry lent (its `close()` leaves the model loaded). */
function wrapNativeEngine(native) {
  return new Engine({ [fromNative]: native });
}

module.exports = { Engine, wrapNativeEngine };
