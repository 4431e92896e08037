"""Benchmark of the SG-NTK layers (ntk.stax) against neural-tangents' own ``stax.Erf``; prints JSON.

Paper: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers et al.,
NeurIPS 2024).

1. ``kernel_fn(x1, x2, ("nngp", "ntk"))`` of Dense-act-Dense-act-Dense networks, jitted, on the
   same inputs: act = ``stax.Erf()`` (baseline, measured in the same run) vs ``SurrogateSign``
   (erf / fast-sigmoid surrogates), ``SurrogateErf`` and the general quadrature ``Surrogate``.
   The first call (compile + run) is reported separately from the steady-state time (min and
   median of interleaved repeats, ``block_until_ready``). Goal: closed-form layers at most 1.2x the cost of ``stax.Erf``.
2. A 10,000 x 10,000 SG-NTK (+ NNGP) in float32 via ``nt.batch`` (blocks of ``--block``), with
   the wall time and the process's peak resident memory.

Usage::

  python benchmarks/ntk_bench.py            # full
  python benchmarks/ntk_bench.py --quick    # small sizes
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp

import ntk

nt = ntk.nt
stax = nt.stax


def _net(act, width=512):
  return stax.serial(
    stax.Dense(width, 1.0, 0.1), act, stax.Dense(width, 1.0, 0.1), act, stax.Dense(1, 1.0, 0.1)
  )


def kernel_fn_costs(n: int, d: int, repeats: int) -> dict:
  """Jitted kernel_fn per layer; repeats interleaved across layers, min and median reported.

  The machine is shared, so the minimum over interleaved repeats is the robust statistic; the
  ratio uses it.
  """
  x1 = jax.random.normal(jax.random.PRNGKey(0), (n, d), jnp.float32)
  x2 = jax.random.normal(jax.random.PRNGKey(1), (n, d), jnp.float32) * 1.3
  layers = {
    "stax.Erf (baseline)": stax.Erf(),
    "SurrogateSign(erf)": ntk.stax.SurrogateSign("erf"),
    "SurrogateErf(m=5, erf)": ntk.stax.SurrogateErf(5.0, "erf"),
    "SurrogateSign(triangle)": ntk.stax.SurrogateSign("triangle"),
    "SurrogateSign(straight_through)": ntk.stax.SurrogateSign("straight_through"),
    "SurrogateSign(fast_sigmoid) [1-D quadrature]": ntk.stax.SurrogateSign("fast_sigmoid"),
    "Surrogate(tanh, erf, deg=20) [2-D quadrature]": ntk.stax.Surrogate(jnp.tanh, "erf", deg=20),
  }
  # The quadrature layers cost ~100-1000x more; they get 2 repeats instead of ``repeats``.
  quadrature = {n for n in layers if "quadrature" in n}
  fns, out = {}, {}
  for name, act in layers.items():
    fns[name] = jax.jit(_net(act)[2], static_argnums=2)
    t0 = time.perf_counter()
    jax.block_until_ready(fns[name](x1, x2, ("nngp", "ntk")))
    out[name] = {"first_call_s (compile + run)": time.perf_counter() - t0, "times": []}
  for r in range(repeats):
    for name, fn in fns.items():
      if name in quadrature and r >= 2:
        continue
      t0 = time.perf_counter()
      jax.block_until_ready(fn(x1, x2, ("nngp", "ntk")))
      out[name]["times"].append(time.perf_counter() - t0)
  base = min(out["stax.Erf (baseline)"]["times"])
  for v in out.values():
    times = v.pop("times")
    v["step_min_s"] = min(times)
    v["step_median_s"] = statistics.median(times)
    v["ratio_vs_stax_erf (min)"] = min(times) / base
  return {"n1": n, "n2": n, "d": d, "repeats": repeats, "layers": out}


def big_kernel(n: int, d: int, block: int) -> dict:
  x = jax.random.normal(jax.random.PRNGKey(2), (n, d), jnp.float32)
  kernel_fn = nt.batch(_net(ntk.stax.SurrogateSign("erf"))[2], batch_size=block, device_count=0)
  t0 = time.perf_counter()
  k = kernel_fn(x, x, ("nngp", "ntk"))
  jax.block_until_ready(k)
  secs = time.perf_counter() - t0
  rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  return {
    "n": n,
    "d": d,
    "block": block,
    "dtype": str(k.ntk.dtype),
    "seconds_incl_compile": secs,
    "peak_rss_gib": rss_gib,
    "output_gib": 2 * k.ntk.size * k.ntk.dtype.itemsize / 2**30,
    "finite": bool(jnp.all(jnp.isfinite(k.ntk))),
  }


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--n", type=int, default=None, help="kernel_fn comparison batch size")
  p.add_argument("--big", type=int, default=None, help="side of the big kernel")
  p.add_argument("--block", type=int, default=1000)
  args = p.parse_args(argv)
  n = args.n or (256 if args.quick else 1000)
  big = args.big or (2000 if args.quick else 10000)
  result = {
    "machine": f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), "
    f"{jax.device_count()} device(s), jax {jax.__version__}",
    "kernel_fn": kernel_fn_costs(n, 16, repeats=7),
    "big_kernel": big_kernel(big, 16, args.block),
  }
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
