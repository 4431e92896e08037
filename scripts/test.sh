#!/usr/bin/env bash
# The test suite: everything once, then the ntk tests again in float64 (JAX_ENABLE_X64=1), then a
# sample of neural-tangents' own tests under ntk (scripts/nt_upstream.py; about 8 minutes).
# tests/experiments runs `python -m experiments.reproduce --smoke` once (2-3 minutes) and executes
# the notebooks in experiments/notebooks (about 1 minute each).
set -euo pipefail
cd "$(dirname "$0")/.."
export JAXSTEER_DATA="${JAXSTEER_DATA:-$(cd .. && pwd)/shared/data}"
python -m pytest -n 2 -q --durations=30 tests "$@"
JAX_ENABLE_X64=1 python -m pytest -n 2 -q tests/ntk "$@"
# neural-tangents 0.6.5's own test suite under ntk (sdist fetched from the registry at run time;
# a sample: NT_NUM_GENERATED_CASES=1, no new file after 5 minutes; full table docs/ntk_upstream.md).
python scripts/nt_upstream.py --mode ci
