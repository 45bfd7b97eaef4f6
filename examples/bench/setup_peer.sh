#!/usr/bin/env bash
# Builds the llama.cpp peer (llama-server, llama-bench, llama-quantize) for the side-by-side
# benchmark (llama-quantize makes the requantized models, e.g. `--model smollm2-q4_k_m`).
#
# The source comes from a registry package only: the sdist of llama-cpp-python vendors llama.cpp
# under vendor/llama.cpp. fetch_sdist.py downloads it from the package index pip is configured
# with (PIP_INDEX_URL or pip's config, else PyPI), pinned by version and sha256 so every run
# compares against the same peer.
#
# Everything lands in $CORTEXSTREAM_CACHE/peer (default ~/.cache/cortexstream/peer), outside git.
# Re-running is cheap: nothing is rebuilt when all three binaries already exist.
#
# Usage: examples/bench/setup_peer.sh        (prints the bin directory on its last line)
set -euo pipefail

SDIST_NAME=llama-cpp-python
SDIST_VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
BUILD_JOBS=${PEER_BUILD_JOBS:-2}

cache=${CORTEXSTREAM_CACHE:-$HOME/.cache/cortexstream}
peer=$cache/peer
src=$peer/src/llama-cpp-python-$SDIST_VERSION
build=$peer/build
bin=$build/bin

if [[ -x $bin/llama-server && -x $bin/llama-bench && -x $bin/llama-quantize ]]; then
    echo "peer: llama-server, llama-bench and llama-quantize already built" >&2
    echo "$bin"
    exit 0
fi

if ! command -v cmake >/dev/null; then
    echo "peer: installing cmake" >&2
    apt-get install -y cmake >&2
fi

mkdir -p "$peer/src"
sdist=$peer/src/llama_cpp_python-$SDIST_VERSION.tar.gz
if [[ ! -f $sdist ]] || ! echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - 2>/dev/null; then
    echo "peer: downloading the $SDIST_NAME $SDIST_VERSION sdist from pip's package index" >&2
    python3 "$(dirname "${BASH_SOURCE[0]}")/fetch_sdist.py" "$SDIST_NAME" "$SDIST_VERSION" "$SDIST_SHA256" "$sdist"
    echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet -
fi

if [[ ! -f $src/vendor/llama.cpp/CMakeLists.txt ]]; then
    echo "peer: unpacking vendor/llama.cpp" >&2
    tar -xzf "$sdist" -C "$peer/src" "llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp"
    mv "$peer/src/llama_cpp_python-$SDIST_VERSION" "$src"
fi

echo "peer: configuring and building llama-server, llama-bench, llama-quantize (-j$BUILD_JOBS, ~15-20 min on 2 cores)" >&2
cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF >&2
# nice: the machine is shared with other builds; the peer is not on anyone's critical path.
nice -n 10 cmake --build "$build" --target llama-server llama-bench llama-quantize -j "$BUILD_JOBS" >&2
echo "$bin"
