#!/usr/bin/env bash
# Checks the committed header is up to date, builds the C library, compiles the C test and the
# C++ example (an HTTP daemon, driven by tests/c/test_daemon.py) against include/cortexstream.h,
# and runs both on the real models: once as they are, once built with AddressSanitizer,
# LeakSanitizer and UBSan (gcc; only the C/C++ side is instrumented, the Rust library is linked
# as is, but its heap goes through ASan's allocator so leaks and bad frees of its memory count
# too). Any sanitizer report fails the run.
#
#   tests/c/run.sh [--valgrind]
#
# The test links the shared library (found through an rpath), the example links the static
# one, so both artefacts are exercised. --valgrind also runs the test under memcheck.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
build_dir="$target_dir/c/tests"
cache="${CORTEXSTREAM_CACHE:-$HOME/.cache/cortexstream}"
models_dir="$cache/models"
CC="${CC:-cc}"
python="${CORTEXSTREAM_PYTHON:-python3}"

# The daemon's HTTP and JSON libraries come from the distribution (Debian packages); install
# them when missing (CI runs as root; elsewhere, install them once by hand).
ensure_daemon_packages() {
    local packages=(libcpp-httplib-dev nlohmann-json3-dev)
    dpkg -s "${packages[@]}" >/dev/null 2>&1 && return 0
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y -q "${packages[@]}" >/dev/null ||
        { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q "${packages[@]}" >/dev/null; }
}
ensure_daemon_packages
smollm2="$models_dir/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# The committed header must match the Rust sources it is generated from.
"$repo_root/bindings/c/generate-header.sh" --check
lib_dir="$("$repo_root/bindings/c/build.sh" | tail -n 1)"
mkdir -p "$build_dir"

"$python" "$repo_root/tests/c/gen_reference_header.py" \
    "$repo_root/tests/fixtures/smollm2_reference.json" "$build_dir/reference.h"
# The shared bad-input matrix, as C (the JSON stays the single source).
"$python" "$repo_root/tests/c/gen_matrix_header.py" \
    "$repo_root/tests/hardening/bad_inputs.json" "$build_dir/matrix.h"

"$CC" -std=c11 -O1 -g -Wall -Wextra -Werror -pedantic -pthread \
    -I "$repo_root/include" -I "$build_dir" \
    "$repo_root/tests/c/test_cortexstream.c" -o "$build_dir/test_cortexstream" \
    -L "$lib_dir" -Wl,-rpath,"$lib_dir" -lcortexstream -lm

# The header must also compile as C++ (extern "C" guards) and under strict C99.
echo '#include "cortexstream.h"' | "$CC" -x c -std=c99 -Wall -Wextra -Werror -pedantic -I "$repo_root/include" -fsyntax-only -
echo '#include "cortexstream.h"' | "${CXX:-c++}" -x c++ -std=c++17 -Wall -Wextra -Werror -pedantic -I "$repo_root/include" -fsyntax-only -

echo "== C API tests"
"$build_dir/test_cortexstream" "$models_dir"

echo "== C++ daemon (static library): completions, SSE, cancel on client disconnect"
make -s -C "$repo_root/examples/cpp" STATIC=1 BUILD_DIR="$build_dir" "$build_dir/daemon"
"$python" "$repo_root/tests/c/test_daemon.py" "$build_dir/daemon" "$smollm2"

echo "== C API tests and C++ example under AddressSanitizer + LeakSanitizer + UBSan"
sanitize=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=86"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
"${SANITIZE_CC:-gcc}" -std=c11 -O1 -g -Wall -Wextra -Werror -pedantic -pthread "${sanitize[@]}" \
    -I "$repo_root/include" -I "$build_dir" \
    "$repo_root/tests/c/test_cortexstream.c" -o "$build_dir/test_cortexstream_asan" \
    -L "$lib_dir" -Wl,-rpath,"$lib_dir" -lcortexstream -lm
"$build_dir/test_cortexstream_asan" "$models_dir"
mkdir -p "$build_dir/asan"
make -s -C "$repo_root/examples/cpp" STATIC=1 SANITIZE=address,undefined CXX="${SANITIZE_CXX:-g++}" \
    BUILD_DIR="$build_dir/asan" "$build_dir/asan/daemon"
"$python" "$repo_root/tests/c/test_daemon.py" "$build_dir/asan/daemon" "$smollm2" >/dev/null
unset ASAN_OPTIONS UBSAN_OPTIONS

if [[ "${1:-}" == "--valgrind" ]]; then
    echo "== C API tests under valgrind"
    valgrind --error-exitcode=99 --errors-for-leak-kinds=definite --leak-check=full \
        "$build_dir/test_cortexstream" "$models_dir"
fi
