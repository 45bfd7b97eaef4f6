'use strict';
// Type checks of the prompt, the messages and the engine options object, before they reach the
// native addon, whose conversion of these arguments would name nothing. Engine settings and a
// request's sampling options are not checked here: the core reads them (names, types, ranges)
// for every front door.

function typeError(param, expected, value) {
  const got = value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
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

/** Engine options must be an object; the core reads the settings in it (names, types, ranges). */
function checkEngineOptions(options) {
  if (options === null || typeof options !== 'object') throw typeError('options', 'an object', options);
}

module.exports = { checkPrompt, checkMessages, checkEngineOptions };
