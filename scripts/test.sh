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
# a time, so the float64 ntk tests run beside it on one worker (the second core), followed there
# by $TEST_SH_BESIDE if set (a command line; .ci/run's wheel check). Their output is printed when
# all have finished, and any of them failing fails this script. No new sample file starts after
# 390 s (its default, 300 s, plus room for the work beside it).
logs="$(mktemp -d)"
(
  rc=0
  JAX_ENABLE_X64=1 python -m pytest -n 1 -q tests/ntk "$@" >"$logs/x64.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/x64.rc"
  if [[ -n "${TEST_SH_BESIDE:-}" ]]; then
    rc=0
    bash -c "$TEST_SH_BESIDE" >"$logs/beside.log" 2>&1 || rc=$?
    echo "$rc" >"$logs/beside.rc"
  fi
) &
beside_pid=$!
trap 'kill "$beside_pid" 2>/dev/null || true; rm -rf "$logs"' EXIT
nt_rc=0
python scripts/nt_upstream.py --mode ci --budget 390 || nt_rc=$?
wait "$beside_pid" || true
echo "== ntk tests in float64 (JAX_ENABLE_X64=1; ran beside the neural-tangents sample)"
cat "$logs/x64.log"
x64_rc="$(cat "$logs/x64.rc" 2>/dev/null || echo 1)"
beside_rc=0
if [[ -n "${TEST_SH_BESIDE:-}" ]]; then
  echo "== $TEST_SH_BESIDE (ran beside the neural-tangents sample)"
  cat "$logs/beside.log" 2>/dev/null || true
  beside_rc="$(cat "$logs/beside.rc" 2>/dev/null || echo 1)"
fi
if ((nt_rc != 0 || x64_rc != 0 || beside_rc != 0)); then
  echo "failed: neural-tangents sample rc=$nt_rc, float64 ntk tests rc=$x64_rc," \
    "beside rc=$beside_rc" >&2
  exit 1
fi
