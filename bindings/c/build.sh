#!/usr/bin/env bash
# Builds the C library and puts it where C and C++ users link it from:
#
#   target/c/lib/libcortexstream.so   (SONAME libcortexstream.so)
#   target/c/lib/libcortexstream.a    (also link -lpthread -ldl -lm)
#   include/cortexstream.h            (committed; see generate-header.sh)
#
# Cargo names the files after the crate's lib target (libcortexstream_c.*), which cannot be
# `cortexstream` because the core crate has that name; C users get the short name.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
lib_dir="$target_dir/c/lib"

cargo build --release -p cortexstream-c --manifest-path "$repo_root/Cargo.toml"
mkdir -p "$lib_dir"
for ext in so a; do
    # Copy then rename, so a program running from the old library never sees a half-written file.
    cp "$target_dir/release/libcortexstream_c.$ext" "$lib_dir/.libcortexstream.$ext.tmp"
    mv -f "$lib_dir/.libcortexstream.$ext.tmp" "$lib_dir/libcortexstream.$ext"
done
echo "$lib_dir"
