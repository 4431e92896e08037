#!/usr/bin/env bash
# The test suite: everything once, then the ntk tests again in float64 (JAX_ENABLE_X64=1).
set -euo pipefail
cd "$(dirname "$0")/.."
export JAXSTEER_DATA="${JAXSTEER_DATA:-$(cd .. && pwd)/shared/data}"
python -m pytest -n 2 -q tests "$@"
JAX_ENABLE_X64=1 python -m pytest -n 2 -q tests/ntk "$@"
