#!/usr/bin/env bash
# Regenerates include/cortexstream.h from bindings/c/src with a pinned cbindgen.
#
#   bindings/c/generate-header.sh            write include/cortexstream.h
#   bindings/c/generate-header.sh --check    fail if the committed header drifted from the code (CI)
#
# The cbindgen version is pinned because its output format changes between releases; a
# different version would make the drift check fail for reasons unrelated to the API.
set -euo pipefail

CBINDGEN_VERSION="0.29.4"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${CORTEXSTREAM_CACHE:-$HOME/.cache/cortexstream}"
tool_root="$cache/cargo-bin"
cbindgen="$tool_root/bin/cbindgen"

if [[ ! -x "$cbindgen" ]] || [[ "$("$cbindgen" --version)" != "cbindgen $CBINDGEN_VERSION" ]]; then
    echo "installing cbindgen $CBINDGEN_VERSION into $tool_root" >&2
    cargo install cbindgen --version "=$CBINDGEN_VERSION" --locked --root "$tool_root" >&2
fi

header="$repo_root/include/cortexstream.h"
generate() {
    "$cbindgen" --quiet --config "$repo_root/bindings/c/cbindgen.toml" \
        --crate cortexstream-c --output "$1" "$repo_root/bindings/c"
}

case "${1:-}" in
    --check)
        fresh="$(mktemp --suffix=.h)"
        trap 'rm -f "$fresh"' EXIT
        generate "$fresh"
        if ! diff -u "$header" "$fresh"; then
            echo "include/cortexstream.h is out of date: run bindings/c/generate-header.sh" >&2
            exit 1
        fi
        echo "include/cortexstream.h is up to date"
        ;;
    "")
        generate "$header"
        echo "wrote $header"
        ;;
    *)
        echo "usage: $0 [--check]" >&2
        exit 2
        ;;
esac
