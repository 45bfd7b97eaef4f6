'use strict';
// Default model paths in the local model cache, as the Python package resolves them.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

/** `$CORTEXSTREAM_CACHE/models`, default `~/.cache/cortexstream/models`. */
function modelsDir() {
  const cache = process.env.CORTEXSTREAM_CACHE || path.join(os.homedir(), '.cache', 'cortexstream');
  return path.join(cache, 'models');
}

/**
 * The native engine options: `model` defaults to SmolLM2 from the cache; `embeddingModel`
 * defaults to MiniLM when it is in the cache, and `null` or `false` loads none.
 */
function withDefaultModels(options) {
  const { model, embeddingModel, ...rest } = options;
  const defaultEmbedding = path.join(modelsDir(), 'minilm');
  let embedding = embeddingModel;
  if (embedding === undefined) embedding = fs.existsSync(defaultEmbedding) ? defaultEmbedding : undefined;
  return {
    ...rest,
    model: model ?? path.join(modelsDir(), 'smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf'),
    embeddingModel: embedding || undefined,
  };
}

module.exports = { modelsDir, withDefaultModels };
