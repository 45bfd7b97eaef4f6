#!/usr/bin/env bash
# Builds the llama.cpp peer (llama-server, llama-bench, llama-quantize) for the side-by-side
# benchmark (llama-quantize makes the requantized models, e.g. `--model smollm2-q4_k_m`).
#
# The source comes from a registry package only: the PyPI sdist of llama-cpp-python vendors
# llama.cpp under vendor/llama.cpp. We fetch that sdist through PyPI's JSON API rather than
# `pip download`, because pip insists on installing the sdist's build backend (scikit-build-core,
# cmake, ninja) just to read its metadata, which costs minutes and is not needed to compile the
# C++ source. The sdist is pinned by version and sha256 so every run compares against the same peer.
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
    echo "peer: downloading $SDIST_NAME $SDIST_VERSION sdist from PyPI" >&2
    python3 - "$SDIST_NAME" "$SDIST_VERSION" "$SDIST_SHA256" "$sdist" <<'EOF'
import json, sys, urllib.parse, urllib.request
name, version, sha256, dest = sys.argv[1:]
# The project-wide endpoint (not /pypi/NAME/VERSION/json, which some PyPI mirrors lack).
meta_url = f"https://pypi.org/pypi/{name}/json"
with urllib.request.urlopen(meta_url, timeout=60) as resp:
    files = json.load(resp)["releases"][version]
sdist = next(f for f in files if f["packagetype"] == "sdist")
if sdist["digests"]["sha256"] != sha256:
    sys.exit(f"PyPI lists a different sha256 for {name} {version}: {sdist['digests']['sha256']}")
# The index may hand out URLs relative to the metadata URL, so resolve before fetching.
urllib.request.urlretrieve(urllib.parse.urljoin(meta_url, sdist["url"]), dest)
EOF
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
