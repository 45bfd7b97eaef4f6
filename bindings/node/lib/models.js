'use strict';
// The local model cache: default model paths and cache names ("smollm2", "minilm", "gemma3"),
// resolved as the Python package resolves them (python/cortexstream/models.py).
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

/**
 * The models the cache knows by name: the file or folder each resolves to, relative to
 * `modelsDir()`. Mirrors `KNOWN_MODELS` in python/cortexstream/models.py (its folder and entry).
 */
const KNOWN_MODELS = Object.freeze({
  gemma3: path.join('gemma3', 'gemma-3-270m-q4_k_m.gguf'),
  minilm: 'minilm',
  smollm2: path.join('smollm2', 'SmolLM2-135M-Instruct.Q4_1.gguf'),
});
const DEFAULT_MODEL = 'smollm2';
const DEFAULT_EMBEDDING_MODEL = 'minilm';

/** `$CORTEXSTREAM_CACHE/models`, default `~/.cache/cortexstream/models`. */
function modelsDir() {
  const cache = process.env.CORTEXSTREAM_CACHE || path.join(os.homedir(), '.cache', 'cortexstream');
  return path.join(cache, 'models');
}

function modelNotFound(message, param) {
  const error = new Error(message);
  error.code = 'model_not_found';
  error.param = param;
  return error;
}

/** Where cache name `name` lives (whether pulled or not). */
const cachedPath = (name) => path.join(modelsDir(), KNOWN_MODELS[name]);

/**
 * The path to load for `nameOrPath` (the option `param`): an existing file or folder as it is, a
 * cache name as its file or folder in the cache. A string with a path separator that does not
 * exist is passed on as a path, so loading it fails naming the path. Otherwise throws
 * `model_not_found` naming `param`: for a known name not yet pulled (saying how to pull it), or
 * for a word that is neither a file nor a known name (listing the known names).
 */
function resolveModel(nameOrPath, param = 'model') {
  if (typeof nameOrPath !== 'string' || fs.existsSync(nameOrPath)) return nameOrPath;
  if (!Object.hasOwn(KNOWN_MODELS, nameOrPath)) {
    if (nameOrPath.includes('/') || nameOrPath.includes(path.sep)) return nameOrPath;
    const known = Object.keys(KNOWN_MODELS).sort().join(', ');
    throw modelNotFound(
      `no model file or folder at ${JSON.stringify(nameOrPath)}, and it is not a known model name (${known})`,
      param,
    );
  }
  const resolved = cachedPath(nameOrPath);
  if (!fs.existsSync(resolved)) {
    throw modelNotFound(
      `model ${JSON.stringify(nameOrPath)} is not in the cache at ${path.dirname(resolved)}; ` +
        `run \`python -m cortexstream pull ${nameOrPath}\``,
      param,
    );
  }
  return resolved;
}

/**
 * The native engine options: `model` (a path or a cache name) defaults to SmolLM2 from the
 * cache; `embeddingModel` (likewise) defaults to MiniLM when it is in the cache, and `null` or
 * `false` loads none.
 */
function withDefaultModels(options) {
  const { model, embeddingModel, ...rest } = options;
  let embedding = embeddingModel;
  if (embedding === undefined) {
    embedding = fs.existsSync(cachedPath(DEFAULT_EMBEDDING_MODEL)) ? cachedPath(DEFAULT_EMBEDDING_MODEL) : undefined;
  }
  return {
    ...rest,
    model: resolveModel(model ?? DEFAULT_MODEL, 'model'),
    embeddingModel: embedding ? resolveModel(embedding, 'embeddingModel') : undefined,
  };
}

module.exports = { KNOWN_MODELS, modelsDir, resolveModel, withDefaultModels };
