'use strict';
// Loads the compiled addon (`build.sh` puts it next to package.json).
const path = require('node:path');

const addonPath = path.join(__dirname, '..', 'cortexstream.node');

function load() {
  try {
    return require(addonPath);
  } catch (error) {
    if (error.code !== 'MODULE_NOT_FOUND') throw error;
    throw new Error(`the cortexstream addon is not built (${addonPath} is missing): run bindings/node/build.sh`, {
      cause: error,
    });
  }
}

module.exports = load();
