#!/usr/bin/env bash
# A newcomer's `pip install cortexstream[server]`, then the server: the wheel maturin builds
# (from the warm cargo target: no recompilation after `maturin develop`) installed with its
# `server` extra into a fresh virtualenv, outside the repository; then `cortexstream-server
# --help`, `python -m cortexstream.server --help`, and the console script serving one real
# completion with SmolLM2 (tests/server/check_installed.py).
#
#   tests/server/installed_package.sh       (uses $CORTEXSTREAM_CACHE/venv's maturin)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${CORTEXSTREAM_CACHE:-$HOME/.cache/cortexstream}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
maturin="$cache/venv/bin/maturin"
wheels="$cache/wheels"
venv="$cache/installed-server-venv"

rm -rf "$wheels" "$venv"
(cd "$repo" && "$maturin" build --release --quiet --out "$wheels")
wheel="$(ls "$wheels"/cortexstream-*.whl)"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$wheel[server]"

# Outside the repository, so nothing is imported from the source tree.
cd "$(mktemp -d)"
"$venv/bin/cortexstream-server" --help | grep -F -- "--port" >/dev/null
"$venv/bin/python" -m cortexstream.server --help | grep -F -- "--port" >/dev/null
CORTEXSTREAM_CACHE="$cache" "$venv/bin/python" "$repo/tests/server/check_installed.py" "$venv/bin/cortexstream-server"
