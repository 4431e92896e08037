"""Scanned vs unrolled decoder layers (``ModelConfig.scan_layers``): compile time and step time.

For each depth, the forward pass and the gradient of the next-token loss of a small Llama-shaped
model are compiled and timed with the layers unrolled (a Python loop: one copy of the layer per
depth in the program) and scanned (``nn.scan``: one copy). Compile time is ``lower + compile``
(separate from the step time); the step time is the median of ``--repeats`` runs after one
warm-up, ``block_until_ready``. The JSON records the load average: on a shared machine the
absolute times are noise-bound, the ratios less so.

Usage::

  nice -n 19 python benchmarks/scan_layers.py --depths 2 4 8 --out scan_layers.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsteer._src.fileio import atomic_write_json

SMALL = dict(
  arch="llama", vocab_size=512, hidden_size=256, intermediate_size=688, num_layers=2,
  num_heads=4, num_kv_heads=4, head_dim=64, max_position_embeddings=512,
)  # fmt: skip


def _time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts))


def measure(depth: int, scan: bool, batch: int, seq: int, repeats: int) -> dict:
  from jaxsteer.models import ModelConfig, init_random

  cfg = ModelConfig(**{**SMALL, "num_layers": depth, "scan_layers": scan})
  lm = init_random(cfg, seed=0)
  ids = jax.random.randint(jax.random.key(1), (batch, seq), 0, cfg.vocab_size, jnp.int32)

  def loss(params, ids):
    logits = lm.apply(params, ids)
    lp = jax.nn.log_softmax(logits[:, :-1], -1)
    return -jnp.mean(jnp.take_along_axis(lp, ids[:, 1:, None], -1))

  out = {}
  for name, f in (("forward", lambda p, x: lm.apply(p, x)), ("grad", jax.grad(loss))):
    t0 = time.perf_counter()
    compiled = jax.jit(f).lower(lm.params, ids).compile()
    compile_s = time.perf_counter() - t0
    out[name] = {"compile_s": compile_s, "step_s": _time(compiled, lm.params, ids, repeats=repeats)}
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("scan_layers.json"))
  a = p.parse_args(argv)
  if min(a.depths) < 1 or a.batch < 1 or a.seq < 2 or a.repeats < 1:
    print("error: depths and batch must be >= 1, seq >= 2, repeats >= 1", file=sys.stderr)
    return 2
  res = {
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "model": {**SMALL, "batch": a.batch, "seq": a.seq},
    "loadavg_start": os.getloadavg(),
    "cpu_count": os.cpu_count(),
    "depths": {},
  }
  for d in a.depths:
    row = {k: measure(d, k == "scan", a.batch, a.seq, a.repeats) for k in ("unrolled", "scan")}
    row["scan_over_unrolled"] = {
      prog: {m: row["scan"][prog][m] / row["unrolled"][prog][m] for m in ("compile_s", "step_s")}
      for prog in ("forward", "grad")
    }
    res["depths"][str(d)] = row
    print(f"depth {d}: {json.dumps(row['scan_over_unrolled'])}", file=sys.stderr, flush=True)
  res["loadavg_end"] = os.getloadavg()
  atomic_write_json(a.out, res)
  print(json.dumps(res, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
