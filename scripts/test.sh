#!/usr/bin/env bash
# The test suite: everything once, then the ntk tests again in float64 (JAX_ENABLE_X64=1).
# tests/experiments runs `python -m experiments.reproduce --smoke` once (2-3 minutes) and executes
# the notebooks in experiments/notebooks (about 1 minute each).
set -euo pipefail
cd "$(dirname "$0")/.."
export JAXSTEER_DATA="${JAXSTEER_DATA:-$(cd .. && pwd)/shared/data}"
python -m pytest -n 2 -q tests "$@"
JAX_ENABLE_X64=1 python -m pytest -n 2 -q tests/ntk "$@"
