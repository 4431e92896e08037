"""Per-token cost of surprisal recoding against both plain-LSTM baselines, as JSON.

Evaluation cost (2-layer LSTM, tied 10k vocabulary, BPTT 35, random weights and tokens: the cost
depends on neither) at batch 1, 10 and 64, for:

- ``none``: the plain LSTM, decoder and log-softmax after the time scan (one matmul for all steps);
- ``none:in_scan``: the plain LSTM with the decoder inside the scan (like recoding, which must
  decode at every step before correcting the state);
- ``surprisal``: surprisal recoding with the closed-form gradient (the default);
- ``surprisal_autodiff``: the same step differentiated with ``jax.grad`` (the earlier code).

Each variant is compiled, then timed ``--repeats`` times over ``--windows`` windows, interleaved
(so a change in load hits all variants). A ratio is per repeat (``us_per_token`` of the variant
over that of the baseline in the same repeat); the JSON gives the median ratio with a percentile
bootstrap interval over repeats, and the 1/5/15-minute load average before and after each batch;
``cpu_ratios`` are the same from the process's CPU time (indicative on a loaded machine).
``--train`` also times one training step (batch ``--train-batch``).

Usage::

  python benchmarks/recoder_bench.py --out benchmarks/results/recoder_bench.json   # quiet machine
  python benchmarks/recoder_bench.py --quick                                      # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

VARIANTS = ("none", "none:in_scan", "surprisal", "surprisal_autodiff")
BASELINES = {"none": "decode after the scan", "none:in_scan": "decode in the scan"}


def _time(fn, n):
  import jax

  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return compile_s, (time.perf_counter() - t0) / n


def _steps(model, step_size):
  import jax.numpy as jnp

  import recoder
  from recoder._src import evaluate as evaluate_lib
  from recoder._src import train as train_lib

  rc = recoder.RecodingConfig("surprisal")
  eta = jnp.float32(step_size)
  return {
    "none": (train_lib.make_eval_step(model, recoder.RecodingConfig()), eta),
    "none:in_scan": (evaluate_lib.make_in_scan_eval_step(model), eta),
    "surprisal": (train_lib.make_eval_step(model, rc), eta),
    "surprisal_autodiff": (train_lib.make_eval_step(model, rc, closed_form=False), eta),
  }


def cost_at_batch(model, params, batch, *, bptt, windows, repeats, step_size=0.1, seed=0):
  """``{"us_per_token": {variant: [per repeat]}, "ratios": {...}, "load_avg": ...}``."""
  import jax
  import numpy as np

  from recoder._src import evaluate as evaluate_lib

  ids = np.random.default_rng(seed).integers(0, model.cfg.vocab_size, batch * bptt * windows + 1)
  load0 = os.getloadavg()
  steps = _steps(model, step_size)
  kw = dict(batch_size=batch, bptt=bptt, key=jax.random.key(seed))
  compile_s = {}
  for name, (fn, eta) in steps.items():
    t0 = time.perf_counter()
    evaluate_lib.window_nll(fn, model, params, ids, step_size=eta, **kw)
    compile_s[name] = time.perf_counter() - t0
  us = {name: [] for name in steps}
  cpu_us = {name: [] for name in steps}
  for _ in range(repeats):
    for name, (fn, eta) in steps.items():
      t0, c0 = time.perf_counter(), time.process_time()
      _, tok = evaluate_lib.window_nll(fn, model, params, ids, step_size=eta, **kw)
      us[name].append(1e6 * (time.perf_counter() - t0) / tok.sum())
      cpu_us[name].append(1e6 * (time.process_time() - c0) / tok.sum())
  return {
    "tokens": batch * bptt * windows,
    "first_pass_s": compile_s,
    "us_per_token": us,
    "median_us_per_token": {k: float(np.median(v)) for k, v in us.items()},
    "ratios": _ratios(us),
    # CPU seconds of this process: less sensitive than wall time to other processes on a loaded
    # machine when XLA runs single-threaded (--threads 1); the wall-time ratios are the measure.
    "cpu_us_per_token": cpu_us,
    "cpu_ratios": _ratios(cpu_us),
    "load_avg_1_5_15": {"before": list(load0), "after": list(os.getloadavg())},
  }


def _ratios(us: dict) -> dict:
  """Median over repeats of variant / baseline (same repeat), percentile bootstrap interval."""
  import numpy as np

  from experiments import stats

  out = {}
  for var in ("surprisal", "surprisal_autodiff"):
    for base, label in BASELINES.items():
      r = np.asarray(us[var]) / np.asarray(us[base])
      est = (
        stats.bootstrap(r, statistic=np.median, method="percentile")
        if len(r) > 1
        else stats.exact(float(r[0]))
      )
      out[f"{var} / {base}"] = {
        "baseline": label, **est.as_dict(), "statistic": "median over repeats",
        "per_repeat": r.tolist(),
      }  # fmt: skip
  return out


def _bench_train(model, cfg, a, name):
  import jax
  import jax.numpy as jnp
  import numpy as np

  import recoder
  from recoder._src import train as train_lib

  rng = np.random.default_rng(0)
  x = rng.integers(0, a.vocab, (a.train_batch, a.bptt)).astype(np.int32)
  y = rng.integers(0, a.vocab, (a.train_batch, a.bptt)).astype(np.int32)
  rc = recoder.RecodingConfig(signal=name)
  tc = train_lib.TrainConfig(batch_size=a.train_batch, bptt=a.bptt)
  params, anchors = train_lib.init_train_state(model, rc, tc, jax.random.key(0))
  tx, step = train_lib.make_train_step(model, rc, tc, 10**6)
  key, eta = jax.random.key(1), jnp.float32(0.1)

  def one():  # the train step donates its inputs: give it fresh copies every call
    fresh = jax.tree_util.tree_map(jnp.array, params)
    hid = recoder.zero_state(cfg, a.train_batch)
    opt = train_lib.with_learning_rate(tx.init(fresh), 1.0)
    return step(fresh, opt, anchors, hid, x, y, key, eta)[3]

  c, s = _time(one, a.repeats)
  return {"compile_s": c, "step_s": s, "tokens_per_s": a.train_batch * a.bptt / s}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, seconds)")
  p.add_argument("--vocab", type=int, default=10000)
  p.add_argument("--hidden", type=int, default=200)
  p.add_argument("--batches", type=int, nargs="+", default=[1, 10, 64])
  p.add_argument("--bptt", type=int, default=35)
  p.add_argument("--windows", type=int, nargs="+", default=[10, 4, 2], help="per batch size")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--threads", type=int, default=1, help="XLA CPU threads (1: single-threaded)")
  p.add_argument("--train", action="store_true", help="also time the training step")
  p.add_argument("--train-batch", type=int, default=20)
  p.add_argument("--out", default=None, help="also write the JSON here")
  a = p.parse_args(argv)
  if a.quick:
    a.vocab, a.hidden, a.batches, a.bptt, a.windows, a.repeats = 500, 32, [1, 4], 10, [2], 3
  if len(a.windows) == 1:
    a.windows = a.windows * len(a.batches)
  if len(a.windows) != len(a.batches):
    p.error("--windows needs one value, or one per --batches")
  from experiments.reproduce import set_threads

  set_threads(a.threads, pin_core=True)  # the command line: this process is ours to pin
  import jax

  import recoder
  from jaxsteer._src.fileio import atomic_write_text

  cfg = recoder.LMConfig(
    vocab_size=a.vocab, embed_dim=a.hidden, hidden_dim=a.hidden, tie_weights=True, dropout=0.2
  )
  model = recoder.LSTMLM(cfg)
  params = {"lm": recoder.init_params(model, jax.random.key(0)), "step": {}}
  res = {
    "device": jax.devices()[0].device_kind, "platform": platform.processor() or platform.machine(),
    "cpu_count": os.cpu_count(), "threads": a.threads,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "config": {"vocab": a.vocab, "hidden": a.hidden, "layers": 2, "tied": True, "bptt": a.bptt,
               "repeats": a.repeats, "step_size": 0.1},
    "load_avg_1_5_15_start": list(os.getloadavg()),
    "eval": {},
  }  # fmt: skip
  for batch, windows in zip(a.batches, a.windows):
    res["eval"][str(batch)] = cost_at_batch(
      model, params, batch, bptt=a.bptt, windows=windows, repeats=a.repeats
    )
  if a.train:
    res["train"] = {n: _bench_train(model, cfg, a, n) for n in ("none", "surprisal", "entropy")}
  res["load_avg_1_5_15_finish"] = list(os.getloadavg())
  text = json.dumps(res, indent=2)
  if a.out:
    atomic_write_text(a.out, text)
  print(text)
  return res


if __name__ == "__main__":
  main()
