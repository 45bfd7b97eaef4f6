'use strict';
// Type checks of what JavaScript callers pass, before anything reaches the native addon.
// Ranges are the core's job (one set of rules for every front door); here only the JS types
// are checked, so a wrong type is a TypeError naming the field instead of a conversion
// error from the addon that names nothing.

const NUMBER_OPTIONS = ['temperature', 'topP', 'minP', 'repetitionPenalty', 'presencePenalty', 'frequencyPenalty'];
// Counts and ids: JavaScript has one number type, so a fraction here is the wrong type.
const INTEGER_OPTIONS = ['maxTokens', 'topK', 'penaltyLastN', 'seed', 'logprobs', 'priority'];

function typeError(param, expected, value) {
  const got = typeof value === 'string' && value.startsWith('the fraction') ? value
    : value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
  const error = new TypeError(`\`${param}\` must be ${expected}, got ${got}`);
  error.code = 'invalid_type';
  error.param = param;
  return error;
}

const isNumberArray = (value) => Array.isArray(value) && value.every((item) => typeof item === 'number');

/** A text prompt or an array of token ids. */
function checkPrompt(prompt) {
  if (typeof prompt !== 'string' && !isNumberArray(prompt)) {
    throw typeError('prompt', 'a string or an array of token ids', prompt);
  }
}

/** An array of `{ role: string, content: string }`. */
function checkMessages(messages) {
  if (!Array.isArray(messages)) throw typeError('messages', 'an array of { role, content }', messages);
  messages.forEach((message, index) => {
    if (message === null || typeof message !== 'object') {
      throw typeError('messages', `an array of { role, content } (messages[${index}])`, message);
    }
    // An assistant turn that only called tools may have null content.
    const onlyCalls = Array.isArray(message.toolCalls) && (message.content === null || message.content === undefined);
    for (const field of onlyCalls ? ['role'] : ['role', 'content']) {
      if (typeof message[field] !== 'string') {
        throw typeError('messages', `an array of { role, content } with string \`messages[${index}].${field}\``, message[field]);
      }
    }
    if (message.toolCalls !== undefined && !Array.isArray(message.toolCalls)) {
      throw typeError('messages', `an array of { role, content } with \`messages[${index}].toolCalls\` an array`, message.toolCalls);
    }
  });
}

// Engine sizes; ranges (whole, >= 1, bounded) are the core's to check.
const ENGINE_NUMBER_OPTIONS = ['maxRunning', 'maxBatchTokens', 'kvCacheTokens', 'blockSize', 'contextLength', 'threads', 'maxQueue'];

/** Engine options: sizes must be numbers (the native conversion would not name the option). */
function checkEngineOptions(options) {
  if (options === null || typeof options !== 'object') throw typeError('options', 'an object', options);
  for (const name of ENGINE_NUMBER_OPTIONS) {
    if (options[name] !== undefined && typeof options[name] !== 'number') throw typeError(name, 'a number', options[name]);
  }
}

/** Generation options; unknown keys (e.g. `signal`) are left to their own handlers. */
function checkOptions(options) {
  if (options === undefined) return;
  if (options === null || typeof options !== 'object') throw typeError('options', 'an object', options);
  for (const name of NUMBER_OPTIONS) {
    if (options[name] !== undefined && typeof options[name] !== 'number') throw typeError(name, 'a number', options[name]);
  }
  for (const name of INTEGER_OPTIONS) {
    if (options[name] !== undefined && !Number.isInteger(options[name])) {
      throw typeError(name, 'an integer', typeof options[name] === 'number' ? `the fraction ${options[name]}` : options[name]);
    }
  }
  const { stop, stopTokenIds, ignoreEos, logitBias } = options;
  if (stop !== undefined && typeof stop !== 'string' && !(Array.isArray(stop) && stop.every((s) => typeof s === 'string'))) {
    throw typeError('stop', 'a string or an array of strings', stop);
  }
  if (stopTokenIds !== undefined && !isNumberArray(stopTokenIds)) {
    throw typeError('stopTokenIds', 'an array of token ids', stopTokenIds);
  }
  if (ignoreEos !== undefined && typeof ignoreEos !== 'boolean') throw typeError('ignoreEos', 'a boolean', ignoreEos);
  checkConstraintTypes(options);
  if (logitBias !== undefined) {
    if (logitBias === null || typeof logitBias !== 'object' || Array.isArray(logitBias)
        || !Object.values(logitBias).every((bias) => typeof bias === 'number')) {
      throw typeError('logitBias', 'an object mapping token ids to numbers', logitBias);
    }
  }
}

const isPlainObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);

/** The constraint options' types; the core parses and compiles them and names the field. */
function checkConstraintTypes({ jsonSchema, regex, grammar, choices, responseFormat }) {
  if (jsonSchema !== undefined && typeof jsonSchema !== 'string' && !isPlainObject(jsonSchema)) {
    throw typeError('jsonSchema', 'an object or a JSON string', jsonSchema);
  }
  for (const [name, value] of [['regex', regex], ['grammar', grammar]]) {
    if (value !== undefined && typeof value !== 'string') throw typeError(name, 'a string', value);
  }
  if (choices !== undefined && !(Array.isArray(choices) && choices.every((c) => typeof c === 'string'))) {
    throw typeError('choices', 'an array of strings', choices);
  }
  if (responseFormat !== undefined && !isPlainObject(responseFormat)) {
    throw typeError('responseFormat', 'an object', responseFormat);
  }
}

module.exports = { checkPrompt, checkMessages, checkOptions, checkEngineOptions };
