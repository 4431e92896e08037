"""Machine bounds shared by the benchmarks (``experiments/bench_models.py``,
``benchmarks/grains_bench.py``): the measured float32 matmul peak of this process's threads.

Usage::

  from experiments._bench_common import matmul_peak

  peak = matmul_peak(512, repeats=20)["xla"]  # FLOP/s
"""

from __future__ import annotations

import time

import numpy as np


def matmul_peak(n: int, repeats: int, *, torch: bool = False) -> dict[str, float]:
  """Measured float32 FLOP/s of an (n, n) @ (n, n) matmul on this process's threads.

  XLA runs a jitted ``x @ y``; with ``torch=True`` PyTorch's ``torch.mm`` runs too, interleaved
  with XLA call by call (so both see the same machine). One warm-up call each, then ``repeats``
  timed calls; each time is the smaller of the call's wall and process CPU time (on a shared
  machine the wall time of a descheduled call would lower the peak and flatter every ratio to
  it), and the peak is ``2 n^3`` over the fastest call.

  Returns:
    ``{"xla": FLOP/s}`` and, with ``torch=True``, ``"torch"``; ``"best"`` is the larger of them.
  """
  import jax

  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  mm = jax.jit(lambda x, y: x @ y)
  ja = jax.device_put(a)
  calls = {"xla": lambda: jax.block_until_ready(mm(ja, ja))}
  if torch:
    import torch as th

    ta = th.from_numpy(a)
    calls["torch"] = lambda: th.mm(ta, ta)
  for call in calls.values():
    call()
  best = dict.fromkeys(calls, float("inf"))
  for _ in range(repeats):
    for name, call in calls.items():
      t0, c0 = time.perf_counter(), time.process_time()
      call()
      wall, cpu = time.perf_counter() - t0, time.process_time() - c0
      best[name] = min(best[name], wall, cpu)
  out = {name: 2.0 * n**3 / t for name, t in best.items()}
  out["best"] = max(out.values())
  return out


def alternated_times(fns: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
  """Wall and process-CPU seconds of ``repeats`` rounds of calls, one call of each of ``fns`` per
  round (``{name: {"wall": [...], "cpu": [...]}}``): on a host whose speed drifts (a shared VM)
  every compared function sees the same conditions, so ratios and differences stay meaningful
  (timing one function's repeats after another's did not)."""
  out = {k: {"wall": [], "cpu": []} for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t0, c0 = time.perf_counter(), time.process_time()
      fn()
      out[k]["wall"].append(time.perf_counter() - t0)
      out[k]["cpu"].append(time.process_time() - c0)
  return out
