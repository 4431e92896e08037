#!/usr/bin/env bash
# Runs the ntk tests (tests/ntk) against the NEWEST JAX the package registry serves, in a
# throw-away virtual environment, and reports what breaks (issue 15: honest compat).
#
#   scripts/ntk_newest_jax.sh              # newest jax + jaxlib
#   scripts/ntk_newest_jax.sh 0.10.2       # a given version
#
# ntk's tested range is TESTED_JAX in ntk/_src/compat.py (= the `ntk` extra in pyproject.toml);
# outside it `import ntk` warns, and the tests (warnings are errors) say so first. Prints the
# version tried and pytest's summary; exit status is pytest's. When this was written (Dec 2026)
# the newest JAX on the registry was 0.10.2, the version the project pins, so this leg then
# tested nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
want="${1:-}"
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
if [[ -n "$want" ]]; then
  python -m pip install -q "jax==$want" "jaxlib==$want"
else
  python -m pip install -q --upgrade jax jaxlib
fi
python -m pip install -q --no-deps neural-tangents==0.6.5
python -m pip install -q frozendict scipy numpy pytest pytest-xdist mpmath more-itertools absl-py
echo "ntk_newest_jax: testing against jax $(python -c 'import jax; print(jax.__version__)')"
export JAXSTEER_DATA="${JAXSTEER_DATA:-$(cd .. && pwd)/shared/data}"
PYTHONPATH="$PWD" python -m pytest -q -p no:cacheprovider -n 0 tests/ntk -rfE "${@:2}"
