#!/usr/bin/env bash
# Builds the addon the way a user's `npm install` does (scripts/install.js runs cargo) and runs
# the Node tests with `npm test` (node's built-in runner; no npm packages needed), one test
# file at a time: each loads the model and the machine may have only two cores.
set -euo pipefail

node_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$node_dir"
# No dependencies to fetch: this only runs the install script. No lockfile is written.
npm install --no-package-lock --no-audit --no-fund --foreground-scripts
exec npm test
