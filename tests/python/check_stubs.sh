#!/usr/bin/env bash
# Checks python/cortexstream/_core.pyi against the compiled module, as pydantic-core does:
# every class, method, signature and property must match. No allowlist is needed today;
# add one (--allowlist FILE, with a comment per entry) only for a documented stubtest limit.
# Run with the interpreter that has cortexstream installed: PYTHON=... tests/python/check_stubs.sh
set -euo pipefail
"${PYTHON:-python3}" -m mypy.stubtest cortexstream._core
