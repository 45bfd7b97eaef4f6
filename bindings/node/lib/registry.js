'use strict';
// The public `Registry` and `Lease` over the native ones: promises and the public `Engine` for
// a leased model. Everything a registry decides (loading, keep-alive, LRU) is the core's.
const { NativeRegistry } = require('./native');
const { wrapNativeEngine } = require('./engine');
const { resolveModel } = require('./models');

class Registry {
  #native;

  constructor(options = {}) {
    this.#native = new NativeRegistry(options);
  }

  /** `model` is a path or a cache name ("smollm2", "minilm", "gemma3"), as in Python. */
  register(name, model, options = {}) {
    this.#native.register(name, resolveModel(model, 'model'), options);
  }

  names() {
    return this.#native.names();
  }

  async unregister(name) {
    return this.#native.unregister(name);
  }

  metrics() {
    return this.#native.metrics();
  }

  async shutdown() {
    return this.#native.shutdown();
  }

  async get(name, keepAlive) {
    return new Lease(await this.#native.get(name, keepAlive));
  }

  async load(name, keepAlive) {
    await (await this.get(name, keepAlive)).release();
  }

  async unload(name) {
    return this.#native.unload(name);
  }

  loaded() {
    return this.#native.loaded().map((model) => ({
      ...model,
      expiresAt: model.expiresAt === null || model.expiresAt === undefined ? null : new Date(model.expiresAt),
    }));
  }

  async close() {
    return this.#native.close();
  }
}

class Lease {
  #native;
  #engine;

  constructor(native) {
    this.#native = native;
  }

  get name() {
    return this.#native.name;
  }

  get isEmbedding() {
    return this.#native.isEmbedding;
  }

  get engine() {
    if (this.#engine === undefined) {
      const native = this.#native.engine();
      this.#engine = native ? wrapNativeEngine(native) : null;
    }
    return this.#engine;
  }

  async embed(texts) {
    return this.#native.embed(typeof texts === 'string' ? [texts] : texts);
  }

  async release() {
    return this.#native.release();
  }
}

module.exports = { Registry, Lease };
