#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh virtual environment with the checkout off the path,
# and makes one call per package. Proves the wheel is self-contained: package data ships inside it,
# `experiments` is not installed, and the runtime dependencies are enough (no test extras).
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . 2>/dev/null \
  || python -m pip wheel -q --no-deps -w "$work/dist" .
wheel="$(ls "$work"/dist/jaxsteer-*.whl)"
if unzip -l "$wheel" | awk '{print $4}' | grep -qE '^experiments/'; then
  echo "wheel installs a top-level 'experiments' package" >&2; exit 1
fi
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
# torch is not a runtime dependency; neural-tangents is installed without TensorFlow as in install.sh.
"$work/venv/bin/python" -m pip install -q --no-deps neural-tangents==0.6.5
"$work/venv/bin/python" -m pip install -q "$wheel"
cd "$work"  # the checkout is not on sys.path from here
"$work/venv/bin/python" - <<'PY'
import importlib.util, pathlib, sys
import jax, jax.numpy as jnp
assert importlib.util.find_spec("experiments") is None, "experiments must not be installed"
import jaxsteer, paca_jax, ntk, recoder
for mod in (jaxsteer, paca_jax, ntk, recoder):
  path = pathlib.Path(mod.__file__)
  assert "site-packages" in str(path), f"{mod.__name__} imported from {path}, not the wheel"
  assert (path.parent / "py.typed").exists(), f"{mod.__name__} lacks py.typed"
  assert mod.__version__ == jaxsteer.__version__, mod.__name__
# one call per package
cfg = jaxsteer.models.ModelConfig(arch="llama", vocab_size=32, hidden_size=16, intermediate_size=32,
  num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8, max_position_embeddings=16)
lm = jaxsteer.models.init_random(cfg, seed=0)
print("jaxsteer", jaxsteer.__version__, lm(jnp.zeros((1, 4), jnp.int32)).shape)
x = jnp.ones((4, 16)); w = jax.random.normal(jax.random.key(0), (16, 8))
print("paca_jax", paca_jax.__version__, paca_jax.partial_matmul(x, w, w[:2], (0, 1)).shape)
from neural_tangents import stax
_, _, kfn = stax.serial(stax.Dense(8), ntk.stax.SurrogateSign("erf", beta=1.0), stax.Dense(1))
print("ntk", ntk.__version__, float(kfn(jnp.ones((2, 3)), None, "ntk")[0, 0]))
m = recoder.LSTMLM(recoder.LMConfig(vocab_size=11, embed_dim=8, hidden_dim=8, num_layers=1))
print("recoder", recoder.__version__, type(m).__name__)
# package data: the TruthfulQA split is read from the installed wheel (importlib.resources)
import json, os
from jaxsteer import evals
split = evals.DEFAULT_SPLIT_PATH
assert "site-packages" in str(split) and split.is_file(), f"split not in the wheel: {split}"
data = os.environ.get("JAXSTEER_DATA")
if data and (pathlib.Path(data) / "truthfulqa" / "v1" / "mc_task.json").is_file():
  steer = evals.load_split(evals.load_truthfulqa(data, "v1"))["steer"]  # verified by question hash
else:
  steer = json.loads(split.read_text())["sets"]["v1"]["steer"]
print("truthfulqa split", len(steer), "steering questions from", split)
PY
echo "wheel smoke: ok"
