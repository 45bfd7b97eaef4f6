#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails on any crash, panic, failed invariant,
# single allocation over 256 MiB or RSS over 2 GiB (issue 9: "run each for a bounded time in
# the tests and keep the corpus").
#
#   fuzz/run.sh                  # each target for FUZZ_SECONDS (default 20) seconds
#   FUZZ_SECONDS=300 fuzz/run.sh # longer, e.g. before refreshing the committed corpus
#   fuzz/run.sh stop_matcher     # only the named targets
#
# cargo-fuzz (pinned) is installed into $CORTEXSTREAM_CACHE/cargo-bin when missing; builds go to
# $CORTEXSTREAM_CACHE/fuzz-target. Only stable Rust is available: cargo-fuzz passes nightly-only
# flags (-Zsanitizer=address, sanitizer coverage), which RUSTC_BOOTSTRAP=1 lets stable rustc
# accept; the ASan runtime ships with the stable toolchain.
#
# The committed corpus in fuzz/corpus/<target> is read, never written: new inputs go to
# $CORTEXSTREAM_CACHE/fuzz-corpus/<target>, which grows across runs on one machine. To refresh
# the committed corpus, see fuzz/README.md. A crash leaves its input in
# $CORTEXSTREAM_CACHE/fuzz-artifacts/<target>/ and the command to reproduce it is printed.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${CORTEXSTREAM_CACHE:-$HOME/.cache/cortexstream}
seconds=${FUZZ_SECONDS:-20}
if [ $# -gt 0 ]; then targets=("$@"); else targets=(gguf_load stop_matcher); fi

if ! "$cache/cargo-bin/bin/cargo-fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $cache/cargo-bin"
    cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked --root "$cache/cargo-bin" --quiet
fi
export PATH="$cache/cargo-bin/bin:$PATH"
export CARGO_TARGET_DIR="$cache/fuzz-target"
export RUSTC_BOOTSTRAP=1

cd "$here"
mkdir -p "$cache/fuzz-logs"
start=$SECONDS
if ! cargo fuzz build >"$cache/fuzz-logs/build.log" 2>&1; then
    echo "fuzz: build failed; last lines of $cache/fuzz-logs/build.log:" >&2
    tail -40 "$cache/fuzz-logs/build.log" >&2
    exit 1
fi
echo "fuzz: build took $((SECONDS - start)) s"

status=0
for target in "${targets[@]}"; do
    scratch="$cache/fuzz-corpus/$target"
    artifacts="$cache/fuzz-artifacts/$target/"
    log="$cache/fuzz-logs/$target.log"
    mkdir -p "$scratch" "$artifacts"
    rm -f "$artifacts"* # only this run's crashes are reported below
    t0=$SECONDS
    if cargo fuzz run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -malloc_limit_mb=256 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        corpus=$(grep -Eo 'DONE +cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9A-Za-z]+' "$log" | tail -1 || true)
        echo "fuzz: $target ok: $runs executions in $((SECONDS - t0)) s ($corpus)"
    else
        status=1
        echo "fuzz: $target FAILED after $((SECONDS - t0)) s; last lines of $log:" >&2
        grep -v '^#[0-9]' "$log" | tail -40 >&2
        for input in "$artifacts"*; do
            [ -e "$input" ] || continue
            echo "fuzz: reproduce in fuzz/ with: PATH=$cache/cargo-bin/bin:\$PATH RUSTC_BOOTSTRAP=1 cargo fuzz run $target $input" >&2
        done
    fi
done
exit $status
