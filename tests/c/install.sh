#!/usr/bin/env bash
# The C library as a user installs and finds it: `bindings/c/build.sh --prefix` into a fresh
# folder, then tests/c/consumer/consumer.c built against that prefix only
#   1. with pkg-config (cortexstream.pc), shared and static (--static);
#   2. with CMake's find_package(cortexstream) (imported targets, shared and static);
# and each program run on SmolLM2. The shared programs must record the versioned SONAME.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
cache="${CORTEXSTREAM_CACHE:-$HOME/.cache/cortexstream}"
model="$cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
work="$target_dir/c/install-test"
prefix="$work/prefix"
consumer="$repo_root/tests/c/consumer"
CC="${CC:-cc}"

rm -rf "$work"
mkdir -p "$work"
"$repo_root/bindings/c/build.sh" --prefix "$prefix" >/dev/null
major="$(sed -n 's/^#define CS_VERSION_MAJOR \([0-9]*\)$/\1/p' "$prefix/include/cortexstream.h")"

# records_soname PROGRAM: the program loads libcortexstream.so.<major>, not the unversioned name.
records_soname() {
    readelf -d "$1" | grep -F "Shared library: [libcortexstream.so.$major]" >/dev/null ||
        { echo "$1 does not record libcortexstream.so.$major:" >&2; readelf -d "$1" | grep NEEDED >&2; return 1; }
}

echo "== pkg-config"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
pkg-config --exists --print-errors "cortexstream >= 0.1"
# shellcheck disable=SC2046 # word splitting of the flags is intended
"$CC" -std=c11 -Wall -Werror "$consumer/consumer.c" -o "$work/pc_shared" \
    $(pkg-config --cflags --libs cortexstream) -Wl,-rpath,"$(pkg-config --variable=libdir cortexstream)"
records_soname "$work/pc_shared"
"$work/pc_shared" "$model"
# shellcheck disable=SC2046
"$CC" -std=c11 -Wall -Werror "$consumer/consumer.c" -o "$work/pc_static" \
    $(pkg-config --cflags cortexstream) "$prefix/lib/libcortexstream.a" $(pkg-config --libs-only-l --static cortexstream | sed 's/-lcortexstream//')
"$work/pc_static" "$model"

echo "== CMake find_package(cortexstream)"
cmake -S "$consumer" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/cmake" >/dev/null
records_soname "$work/cmake/consumer_shared"
"$work/cmake/consumer_shared" "$model"
"$work/cmake/consumer_static" "$model"
