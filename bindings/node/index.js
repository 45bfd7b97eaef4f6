'use strict';
// cortexstream for Node.js; the API is documented in index.d.ts.
const { Engine } = require('./lib/engine');
const { Registry, Lease } = require('./lib/registry');
const { modelsDir } = require('./lib/models');
const { setLogListener } = require('./lib/logs');

module.exports = { Engine, Registry, Lease, modelsDir, setLogListener };
