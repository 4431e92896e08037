#!/usr/bin/env bash
# The test suite: everything once, then the ntk tests again in float64 (JAX_ENABLE_X64=1) beside
# a sample of neural-tangents' own tests under ntk (scripts/nt_upstream.py; about 6 minutes).
# tests/experiments runs `python -m experiments.reproduce --smoke` once (2-3 minutes) and executes
# the notebooks in experiments/notebooks (about 1 minute each).
set -euo pipefail
cd "$(dirname "$0")/.."
export JAXSTEER_DATA="${JAXSTEER_DATA:-$(cd .. && pwd)/shared/data}"
python -m pytest -n 2 -q --durations=30 tests "$@"
# neural-tangents 0.6.5's own test suite under ntk (sdist fetched from the registry at run time;
# a sample: NT_NUM_GENERATED_CASES=1; full table docs/ntk_upstream.md) runs one pytest process at
# a time, so the float64 ntk tests run beside it on one worker (the second core); their output is
# printed when both have finished, and either failing fails this. No new sample file starts after
# 390 s (its default, 300 s, plus room for the float64 tests' share of the machine).
x64_log="$(mktemp)"
JAX_ENABLE_X64=1 python -m pytest -n 1 -q tests/ntk "$@" >"$x64_log" 2>&1 &
x64_pid=$!
trap 'kill "$x64_pid" 2>/dev/null || true; rm -f "$x64_log"' EXIT
nt_rc=0
python scripts/nt_upstream.py --mode ci --budget 390 || nt_rc=$?
x64_rc=0
wait "$x64_pid" || x64_rc=$?
echo "== ntk tests in float64 (JAX_ENABLE_X64=1, beside the neural-tangents sample)"
cat "$x64_log"
if ((nt_rc != 0 || x64_rc != 0)); then
  echo "failed: neural-tangents sample rc=$nt_rc, float64 ntk tests rc=$x64_rc" >&2
  exit 1
fi
