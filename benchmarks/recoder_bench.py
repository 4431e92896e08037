"""Tokens/s of the plain LSTM LM and of the recoded model (eval and train steps), as JSON.

Compile time is reported apart from the steady-state step time; the recoding overhead is the
ratio of seconds per token to the baseline measured in the same run.

Usage::

  python benchmarks/recoder_bench.py                 # 2x200 LSTM, V=10k, batch 20, BPTT 35
  python benchmarks/recoder_bench.py --quick         # small sizes, a few seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import recoder
from recoder._src import train as train_lib

SINGLE_PASS = ("surprisal", "ptok_ppl", "entropy")


def _time(fn, n):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return compile_s, (time.perf_counter() - t0) / n


def _bench_variant(model, cfg, name, a, x, y):
  tokens = a.batch_size * a.bptt
  rc = recoder.RecodingConfig(signal=name, num_samples=a.samples)
  tc = train_lib.TrainConfig(batch_size=a.batch_size, bptt=a.bptt)
  params, anchors = train_lib.init_train_state(model, rc, tc, jax.random.key(0))
  h = recoder.zero_state(cfg, a.batch_size)
  ev = train_lib.make_eval_step(model, rc)
  key = jax.random.key(1)
  eta = jnp.float32(0.1)
  c, s = _time(lambda: ev(params, h, x, y, key, eta), a.iters)
  ev_res = {"compile_s": c, "step_s": s, "tokens_per_s": tokens / s}
  if not (a.train and name in ("none", "surprisal", "entropy")):
    return ev_res, None
  tx, step = train_lib.make_train_step(model, rc, tc, 10**6)

  def one():  # the train step donates its inputs: give it fresh copies every call
    fresh = jax.tree_util.tree_map(jnp.array, params)
    hid = recoder.zero_state(cfg, a.batch_size)
    opt = train_lib.with_learning_rate(tx.init(fresh), 1.0)
    return step(fresh, opt, anchors, hid, x, y, key, eta)[3]

  c, s = _time(one, a.iters)
  return ev_res, {"compile_s": c, "step_s": s, "tokens_per_s": tokens / s}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--vocab", type=int, default=10000)
  p.add_argument("--hidden", type=int, default=200)
  p.add_argument("--batch-size", type=int, default=20)
  p.add_argument("--bptt", type=int, default=35)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--samples", type=int, default=10)
  p.add_argument("--signals", nargs="+", default=[*SINGLE_PASS, "mc_entropy"])
  p.add_argument("--train", action="store_true", help="also time the training step")
  a = p.parse_args(argv)
  if a.quick:
    a.vocab, a.hidden, a.batch_size, a.bptt, a.iters, a.samples = 500, 32, 8, 10, 3, 4
  cfg = recoder.LMConfig(
    vocab_size=a.vocab, embed_dim=a.hidden, hidden_dim=a.hidden, tie_weights=True, dropout=0.2
  )
  model = recoder.LSTMLM(cfg)
  rng = np.random.default_rng(0)
  x = rng.integers(0, a.vocab, (a.batch_size, a.bptt)).astype(np.int32)
  y = rng.integers(0, a.vocab, (a.batch_size, a.bptt)).astype(np.int32)
  res = {
    "device": jax.devices()[0].device_kind, "platform": platform.processor() or platform.machine(),
    "config": {"vocab": a.vocab, "hidden": a.hidden, "layers": 2, "batch": a.batch_size,
               "bptt": a.bptt, "mc_samples": a.samples},
    "eval": {}, "train": {},
  }  # fmt: skip
  for name in ["none", *a.signals]:
    res["eval"][name], tr = _bench_variant(model, cfg, name, a, x, y)
    if tr is not None:
      res["train"][name] = tr
  for part in ("eval", "train"):
    base = res[part].get("none")
    for v in res[part].values():
      if base:
        v["overhead_vs_baseline"] = v["step_s"] / base["step_s"]
  res["single_pass_max_overhead_eval"] = max(
    res["eval"][s]["overhead_vs_baseline"] for s in a.signals if s in SINGLE_PASS
  )
  print(json.dumps(res, indent=2))
  return res


if __name__ == "__main__":
  main()
