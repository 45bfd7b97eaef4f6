#!/usr/bin/env bash
# Checks python/cortexstream/_core.pyi against the compiled module, as pydantic-core does:
# every class, method, signature and property must match. The allowlist holds only documented
# stubtest limits, each with its reason (today: the stub-only TypedDict of `**sampling`).
# Run with the interpreter that has cortexstream installed: PYTHON=... tests/python/check_stubs.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"${PYTHON:-python3}" -m mypy.stubtest cortexstream._core --allowlist "$here/stubtest_allowlist.txt"
