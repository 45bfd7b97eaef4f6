'use strict';
// The core's structured log records (a request's queued / first token / finished with reason
// and token counts, model load, preemptions, KV pressure) delivered to one JavaScript listener.
const native = require('./native');

const LEVELS = ['off', 'error', 'warn', 'info', 'debug', 'trace'];

/**
 * Calls `listener({ level, target, message, fields })` for every record at `level` ('error',
 * 'warn', 'info' (default), 'debug' or 'trace') and more severe; `null` stops. Records come
 * from the engine threads through a queue, so the listener runs on the JavaScript thread; a
 * listener that throws is reported with `process.emitWarning` and generation goes on.
 * A request's records carry `fields.request_id` (the engine's) and `fields.tag` (the `tag`
 * option). Prompt text is never logged.
 */
function setLogListener(listener, level = 'info') {
  if (listener === null || listener === undefined) {
    native.setLogCallback(0, null);
    return;
  }
  if (typeof listener !== 'function') {
    throw new TypeError(`listener must be a function or null, got ${typeof listener}`);
  }
  const number = LEVELS.indexOf(level);
  if (number < 1) {
    const error = new RangeError(`level must be one of ${LEVELS.slice(1).join(', ')}, got ${JSON.stringify(level)}`);
    error.code = 'invalid_request';
    error.param = 'level';
    throw error;
  }
  native.setLogCallback(number, (levelNumber, target, message, fieldsJson) => {
    try {
      listener({ level: LEVELS[levelNumber], target, message, fields: JSON.parse(fieldsJson) });
    } catch (error) {
      process.emitWarning(`a cortexstream log listener threw: ${error && error.stack ? error.stack : error}`);
    }
  });
}

module.exports = { setLogListener };
