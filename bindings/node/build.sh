#!/usr/bin/env bash
# Builds the addon with cargo (no napi CLI needed) and puts it where index.js loads it:
# bindings/node/cortexstream.node.
set -euo pipefail

node_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$node_dir/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

cargo build --release -p cortexstream-node --manifest-path "$repo_root/Cargo.toml"
# Copy then rename, so a node process loading the old addon never sees a half-written file.
cp "$target_dir/release/libcortexstream_node.so" "$node_dir/.cortexstream.node.tmp"
mv -f "$node_dir/.cortexstream.node.tmp" "$node_dir/cortexstream.node"
