'use strict';
// One request from submit to its last chunk, as a promise or an async iterable.

/**
 * Submits with `submit(handleChunk)`; returns the completion promise and a cancel function.
 *
 * `onChunk` sees every chunk until it throws or `options.signal` aborts. Either cancels the
 * request, and the promise then rejects with that error once the engine has ended the
 * request (within one engine step), so a settled promise means the engine is done with it.
 */
function runRequest(submit, options, onChunk) {
  const signal = options?.signal;
  let request;
  const completion = new Promise((resolve, reject) => {
    signal?.throwIfAborted();
    let failed = false;
    let failure;
    const fail = (error) => {
      if (failed) return;
      failed = true;
      failure = error;
      request.cancel();
    };
    const onAbort = () => fail(signal.reason);
    // Chunks arrive on later turns of the event loop, never during `submit`, so `request`
    // is always set when the handler runs.
    // The native side hands over the whole completion with the last chunk (and null before).
    request = submit((chunk, completion) => {
      if (onChunk && !failed) {
        try {
          onChunk(chunk);
        } catch (error) {
          fail(error);
        }
      }
      if (completion == null) return;
      signal?.removeEventListener('abort', onAbort);
      if (failed) reject(failure);
      else resolve(completion);
    });
    signal?.addEventListener('abort', onAbort, { once: true });
  });
  return { completion, cancel: () => request?.cancel() };
}

/** A request's chunks as an async iterable; leaving the loop early cancels the request. */
class ChunkStream {
  #queue = [];
  #wake = null;
  #settled = false;
  #run;

  constructor(submit, options) {
    this.#run = runRequest(submit, options, (chunk) => {
      this.#queue.push(chunk);
      this.#notify();
    });
    /** The whole result; rejects as the iteration does. */
    this.completion = this.#run.completion;
    // Failures reach the caller through the iterator, so an unobserved `completion` must not
    // count as an unhandled rejection.
    this.completion
      .catch(() => {})
      .finally(() => {
        this.#settled = true;
        this.#notify();
      });
  }

  /** Asks the engine to stop; the stream then ends with finishReason "cancelled". */
  cancel() {
    this.#run.cancel();
  }

  async *[Symbol.asyncIterator]() {
    try {
      for (;;) {
        while (this.#queue.length > 0) yield this.#queue.shift();
        if (this.#settled) break;
        await new Promise((resolve) => {
          this.#wake = resolve;
        });
      }
      await this.completion; // rethrows an abort
    } finally {
      this.cancel(); // no effect once the request has ended
    }
  }

  #notify() {
    this.#wake?.();
    this.#wake = null;
  }
}

module.exports = { runRequest, ChunkStream };
