#!/usr/bin/env bash
# Builds the API reference from the docstrings (pdoc) into docs/api (or $1); warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/api}"
python -W error::UserWarning -m pdoc --docformat google -o "$out" jaxsteer paca_jax ntk recoder
echo "API reference: $out/index.html"
