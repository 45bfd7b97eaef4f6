'use strict';
// cortexstream for Node.js; the API is documented in index.d.ts.
const { Engine } = require('./lib/engine');
const { modelsDir } = require('./lib/models');
const { setLogListener } = require('./lib/logs');

module.exports = { Engine, modelsDir, setLogListener };
