#!/usr/bin/env bash
# Runs a command while busy loops keep every core occupied (two per core), so timing-dependent
# ordering bugs show up the way they do on a loaded machine (issue 17: a KV gauge read after the
# final event was stale only when the CPU was oversubscribed). The loops end with the command.
#
#   scripts/oversubscribed.sh COMMAND [ARGS...]
set -uo pipefail

busy_pids=()
stop_busy_loops() {
    if [ "${#busy_pids[@]}" -gt 0 ]; then
        kill "${busy_pids[@]}" 2>/dev/null
        wait "${busy_pids[@]}" 2>/dev/null
    fi
}
trap stop_busy_loops EXIT

loops=$(( 2 * $(nproc) ))
for _ in $(seq "$loops"); do
    ( while :; do :; done ) &
    busy_pids+=("$!")
done
echo "running with $loops busy loops on $(nproc) cores: $*"
"$@"
