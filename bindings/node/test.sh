#!/usr/bin/env bash
# Builds the addon and runs the Node tests (node's built-in runner; no npm packages needed).
# One test file at a time: each loads the model and the machine may have only two cores.
set -euo pipefail

node_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$node_dir/build.sh"
cd "$node_dir"
# --expose-gc: the resource-loop tests collect garbage before reading RSS (see resource_loops.test.mjs).
exec node --expose-gc --test --test-concurrency=1 --test-reporter=spec test/*.test.mjs
