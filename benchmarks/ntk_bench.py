"""Benchmark of the SG-NTK layers (ntk.stax) against neural-tangents' own ``stax.Erf``; prints JSON.

Paper: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers et al.,
NeurIPS 2024).

1. ``kernel_fn(x1, x2, ("nngp", "ntk"))`` of Dense-act-Dense-act-Dense networks, jitted, on the
   same inputs: every surrogate layer of the registry (closed forms and Chebyshev fits) against
   ``stax.Erf()`` (goal: at most 1.2x), and the general ``Surrogate`` against NT's
   ``ElementwiseNumerical`` at the same quadrature degree (goal: at most 1.2x), all in one run.
   The first call (compile + run) is reported separately from the steady-state time (min and
   median of interleaved repeats, ``block_until_ready``).
2. float32-vs-float64 relative error per layer (NNGP, SG-NTK, and I(X, X) with its diagonal).
3. A 10,000 x 10,000 SG-NTK (+ NNGP) in float32 via ``nt.batch`` (blocks of ``--block``), with
   the wall time and the process's peak resident memory.

Usage::

  python benchmarks/ntk_bench.py            # full
  python benchmarks/ntk_bench.py --quick    # small sizes
  python benchmarks/ntk_bench.py --n 32 --big 200 --block 100 --repeats 2   # smoke (a minute)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import time
import warnings
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

import ntk

nt = ntk.nt
stax = nt.stax


@dataclasses.dataclass(frozen=True)
class _LaplaceSurrogate(ntk.SurrogateDerivative):
  """A user-defined surrogate g(v) = beta exp(-beta |v|): no closed form given, so its H_g is the
  generic Chebyshev fit (``surrogates.surrogate_fit``, built once before the timed calls)."""

  beta: float = 1.0
  name: ClassVar[str] = "bench_laplace"

  def grad(self, x):
    return self.beta * jnp.exp(-self.beta * jnp.abs(x))

  @property
  def fit_scale(self):
    return 1.0 / self.beta


def _net(act, width=512):
  return stax.serial(
    stax.Dense(width, 1.0, 0.1), act, stax.Dense(width, 1.0, 0.1), act, stax.Dense(1, 1.0, 0.1)
  )


def _layers(deg: int):
  """Every surrogate layer (registry), the general Surrogate, and the two NT baselines."""
  layers = {
    "stax.Erf (baseline)": stax.Erf(),
    "SurrogateSign(erf)": ntk.stax.SurrogateSign("erf"),
    "SurrogateSign(gaussian)": ntk.stax.SurrogateSign("gaussian"),
    "SurrogateErf(m=5, erf)": ntk.stax.SurrogateErf(5.0, "erf"),
    "SurrogateSign(triangle) [Chebyshev fit]": ntk.stax.SurrogateSign("triangle"),
    "SurrogateSign(fast_sigmoid) [Chebyshev fit]": ntk.stax.SurrogateSign("fast_sigmoid"),
    "SurrogateErf(m=5, fast_sigmoid) [Chebyshev fit]": ntk.stax.SurrogateErf(5.0, "fast_sigmoid"),
    "SurrogateSign(straight_through)": ntk.stax.SurrogateSign("straight_through"),
    "SurrogateSign(user Laplace surrogate) [generic Chebyshev fit]": ntk.stax.SurrogateSign(
      _LaplaceSurrogate(2.0)
    ),
    f"ElementwiseNumerical(tanh, deg={deg}) (baseline)": stax.ElementwiseNumerical(
      jnp.tanh, deg, df=lambda x: 1 - jnp.tanh(x) ** 2
    ),
    f"Surrogate(tanh, erf, deg={deg}) [1-D reduction]": ntk.stax.Surrogate(
      jnp.tanh, "erf", deg=deg, true_grad=lambda x: 1 - jnp.tanh(x) ** 2
    ),
    f"Surrogate(tanh, fast_sigmoid, deg={deg}) [2-D]": ntk.stax.Surrogate(
      jnp.tanh, "fast_sigmoid", deg=deg, true_grad=lambda x: 1 - jnp.tanh(x) ** 2
    ),
  }
  return layers


def kernel_fn_costs(n: int, d: int, repeats: int, deg: int) -> dict:
  """Jitted kernel_fn per layer; repeats interleaved across layers, min and median reported.

  The machine is shared, so the minimum over interleaved repeats is the robust statistic; the
  ratios use it: closed-form / fitted layers against ``stax.Erf``, the general ``Surrogate``
  against NT's ``ElementwiseNumerical`` at the same degree.
  """
  x1 = jax.random.normal(jax.random.PRNGKey(0), (n, d), jnp.float32)
  x2 = jax.random.normal(jax.random.PRNGKey(1), (n, d), jnp.float32) * 1.3
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ElementwiseNumerical warns on construction
    layers = _layers(deg)
  fns, out = {}, {}
  for name, act in layers.items():
    fns[name] = jax.jit(_net(act)[2], static_argnums=2)
    t0 = time.perf_counter()
    jax.block_until_ready(fns[name](x1, x2, ("nngp", "ntk")))
    out[name] = {"first_call_s (compile + run)": time.perf_counter() - t0, "times": []}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(x1, x2, ("nngp", "ntk")))
      out[name]["times"].append(time.perf_counter() - t0)
  base = min(out["stax.Erf (baseline)"]["times"])
  base_num = min(out[f"ElementwiseNumerical(tanh, deg={deg}) (baseline)"]["times"])
  for name, v in out.items():
    times = v.pop("times")
    v["step_min_s"] = min(times)
    v["step_median_s"] = statistics.median(times)
    if name.startswith("Surrogate(") or name.startswith("ElementwiseNumerical"):
      v["ratio_vs_elementwise_numerical (min)"] = min(times) / base_num
    else:
      v["ratio_vs_stax_erf (min)"] = min(times) / base
  return {"n1": n, "n2": n, "d": d, "repeats": repeats, "deg": deg, "layers": out}


def precision(n: int, d: int) -> dict:
  """float32 vs float64 per layer, for nngp, ntk = I(x1, x2) and I(X, X) (with its diagonal).

  Reported: the largest elementwise relative error over entries with |K| >= 1e-2 max |K|, the
  diagonal of I(X, X) on its own, and max |K32 - K64| / max |K64|. (Entries near 0 are sums
  that cancel across layers; their elementwise relative error is NT's float32 rounding, the same
  for ``stax.Erf``, which is listed for comparison.)
  """
  rs = np.random.RandomState(0)
  x1 = rs.randn(n, d) * rs.uniform(0.5, 1.8, (n, 1))
  x2 = rs.randn(n // 2, d) * 1.3
  out = {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    names = list(_layers(20))
  for name in names:
    if name.startswith("ElementwiseNumerical") or name.startswith("Surrogate("):
      continue
    res = {}
    for x64 in (False, True):
      with jax.enable_x64(x64):
        act = _layers(20)[name]
        kf = jax.jit(_net(act, 64)[2], static_argnums=2)
        dt = jnp.float64 if x64 else jnp.float32
        a, b = jnp.asarray(x1, dt), jnp.asarray(x2, dt)
        k = kf(a, b, ("nngp", "ntk"))
        res[x64] = [np.asarray(v, np.float64) for v in (k[0], k[1], kf(a, None, "ntk"))]
    entry = {}
    for key, got, ref in zip(["nngp", "ntk", "I(X,X)"], res[False], res[True], strict=True):
      big = np.abs(ref) >= 1e-2 * np.max(np.abs(ref))
      entry[f"{key} rel (|K| >= 1e-2 max)"] = float(
        np.max(np.abs(got - ref)[big] / np.abs(ref[big]))
      )
      entry[f"{key} abs / max"] = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    d32, d64 = np.diag(res[False][2]), np.diag(res[True][2])
    entry["I(X,X) diagonal rel"] = float(np.max(np.abs(d32 - d64) / np.abs(d64)))
    out[name] = entry
  return out


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
  p.add_argument("--deg", type=int, default=20, help="quadrature degree of the general layers")
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--out", default=None, help="also write the JSON here")
  args = p.parse_args(argv)
  n = args.n or (256 if args.quick else 1000)
  big = args.big or (2000 if args.quick else 10000)
  result = {
    "machine": f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), "
    f"{jax.device_count()} device(s), jax {jax.__version__}",
    "loadavg_start": os.getloadavg(),
    "kernel_fn": kernel_fn_costs(n, 16, repeats=args.repeats or 5, deg=args.deg),
    "float32_vs_float64_rel_err": precision(12, 5),
    "big_kernel": big_kernel(big, 16, args.block),
    "loadavg_end": os.getloadavg(),
  }
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    from jaxsteer._src.fileio import atomic_write_text

    atomic_write_text(args.out, text + "\n")
  return result


if __name__ == "__main__":
  main()
