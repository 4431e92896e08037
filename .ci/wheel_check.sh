#!/usr/bin/env bash
# .ci/run's wheel check: scripts/wheel_smoke.sh on a copy of the checkout (tracked and untracked,
# not ignored files), so that its in-tree build (build/, *.egg-info) cannot race the tests that
# run beside it (scripts/test.sh, $TEST_SH_BESIDE).
set -euo pipefail
cd "$(dirname "$0")/.."
copy="$(mktemp -d)"
trap 'rm -rf "$copy"' EXIT
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$copy"
bash "$copy/scripts/wheel_smoke.sh" 2>&1 \
  | grep -vE "^WARNING: Location|^ERROR: pip's dependency resolver|^neural-tangents 0.6.5 requires"
