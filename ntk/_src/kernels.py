"""Closed-form and quadrature dual kernels of the SG-NTK, and a direct fully connected recursion.

Paper: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers,
Memmesheimer, Goedeke, NeurIPS 2024); formulas in /work/shared/specs/sgntk.md sections 2.2-2.5.

For a layer pair (x, x') with pre-activation variances q1 = Sigma(x, x) (the *true* side),
q2 = Sigma(x', x') (the *surrogate* side) and covariance c = Sigma(x, x'), (u, v) ~ N(0,
[[q1, c], [c, q2]]):

* ``arcsine_nngp``: E[sigma(u) sigma(v)] for sigma = sign (a = 0) or erf_m (a = 1 / (2 m^2)):
  (2 / pi) arcsin(c / sqrt((q1 + a)(q2 + a))).
* ``sg_dot``: the mixed derivative kernel E[sigma'(u) g(v)] (true derivative on the x side,
  surrogate on the x' side). For sigma' = 2 N(0, a) (sign, erf_m) and any surrogate g:
  E = 2 / sqrt(2 pi (q1 + a)) * H_g(q2 - c^2 / (q1 + a)), H_g(s2) = E[g(sqrt(s2) xi)]. For a
  Gaussian g = A N(0, b) this is (A / pi) ((q1 + a)(q2 + b) - c^2)^(-1/2).
* ``naive_dot``: E[sigma'(u) sigma'(v)] for erf_m, (2 / pi)((q1 + a)(q2 + a) - c^2)^(-1/2), which
  diverges on the diagonal as m -> infinity (the naive NTK of a jump).
* ``gauss_hermite_2d``: E[f1(u) f2(v)] by 2-D Gauss-Hermite quadrature (general activations).

Usage::

  from ntk import analytic_sg_ntk
  nngp, sg_ntk = analytic_sg_ntk(x1, x2, depth=2, w_std=1.0, b_std=0.1, surrogate="erf")
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from . import surrogates as _surrogates

_TINY = 1e-30


def erf_offset(m: float | None) -> float:
  """Variance offset a = 1 / (2 m^2) of erf(m x)'s derivative 2 N(0, a); ``None`` means sign."""
  if m is None or m == math.inf:
    return 0.0
  if not (math.isfinite(float(m)) and m > 0):
    raise ValueError(f"erf_m: m must be positive (or None / inf for sign), got {m!r}")
  return 1.0 / (2.0 * float(m) ** 2)


def _snap_correlation(rho):
  """Clips rho to [-1, 1] and snaps |rho| within 4 ulp of 1 to +-1.

  arcsin has infinite slope at 1, so a correlation that should be exactly 1 (a point with itself)
  but carries rounding error eps is mapped with error ~ sqrt(2 eps) (3e-4 in float32), which the
  next layer amplifies. Snapping makes the kernel exact on the diagonal; it changes the value for
  genuinely distinct points only when they are equal to working precision.
  """
  rho = jnp.clip(rho, -1.0, 1.0)
  eps = jnp.finfo(jnp.result_type(rho)).eps
  return jnp.where(1.0 - jnp.abs(rho) < 4 * eps, jnp.sign(rho), rho)


def arcsine_nngp(c, q1, q2, a: float = 0.0):
  """E[sigma(u) sigma(v)] for sigma = sign (a = 0) or erf(m .) (a = 1 / (2 m^2))."""
  prod = (q1 + a) * (q2 + a)
  rho = c / jnp.sqrt(jnp.maximum(prod, _TINY))
  return (2.0 / math.pi) * jnp.arcsin(_snap_correlation(rho))


def arcsine_nngp_diag(q, a: float = 0.0):
  """E[sigma(u)^2], u ~ N(0, q): (2 / pi) arcsin(q / (q + a)); 1 for sign (q > 0)."""
  return (2.0 / math.pi) * jnp.arcsin(jnp.clip(q / jnp.maximum(q + a, _TINY), -1.0, 1.0))


def conditional_variance(c, q1a, q2):
  """s2 = q2 - c^2 / q1a, computed as q2 (1 - rho)(1 + rho), rho = c / sqrt(q1a q2) clipped and
  snapped like the arcsine NNGP (``_snap_correlation``).

  The direct difference cancels: on the diagonal (c = q1 = q2 up to rounding) it leaves a few ulp
  of q2, i.e. s ~ sqrt(eps q2) ~ 3e-4 in float32 instead of 0, and a kinked surrogate's H_g(s2)
  ~ g(0) - O(s) then carries a relative error of ~1e-3 (fast sigmoid 1.3e-3, triangle 9.2e-4
  measured). With rho snapped, s2 is exactly 0 there and float32 agrees with float64 to ~1e-7.
  """
  rho = _snap_correlation(c / jnp.sqrt(jnp.maximum(q1a * q2, _TINY)))
  return jnp.maximum(q2, 0.0) * (1.0 - rho) * (1.0 + rho)


def sg_dot(c, q1, q2, surrogate, a: float = 0.0, true_mass: float = 2.0):
  """E[sigma'(u) g(v)], sigma' = true_mass * N(0, a) (sign: a = 0; erf_m: a = 1/(2m^2)).

  Gaussian g = A N(0, b): (true_mass A / 2 pi) / sqrt(q1a (s2 + b)), else
  true_mass / sqrt(2 pi q1a) * H_g(s2), with q1a = q1 + a and s2 = ``conditional_variance``
  (q1a (s2 + b) = q1a (q2 + b) - c^2, without its cancellation).
  """
  g = _surrogates.get_surrogate(surrogate)
  q1a = jnp.maximum(q1 + a, _TINY)
  s2 = conditional_variance(c, q1a, q2)
  gauss = g.gaussian
  if gauss is not None:
    mass, b = gauss
    det = q1a * (s2 + b)
    return (true_mass * mass / (2.0 * math.pi)) / jnp.sqrt(jnp.maximum(det, _TINY))
  return true_mass / jnp.sqrt(2.0 * math.pi * q1a) * g.smoothed(s2)


def naive_dot(c, q1, q2, a: float = 0.0):
  """E[erf_m'(u) erf_m'(v)] = (2 / pi)((q1 + a)(q2 + a) - c^2)^(-1/2) (naive NTK; a = 1/(2m^2))."""
  det = (q1 + a) * (q2 + a) - c**2
  return (2.0 / math.pi) / jnp.sqrt(jnp.maximum(det, _TINY))


def gauss_hermite_2d(f1, f2, c, q1, q2, deg: int = 40):
  """E[f1(u) f2(v)] with (u, v) ~ N(0, [[q1, c], [c, q2]]), 2-D Gauss-Hermite (``deg`` nodes)."""
  if int(deg) < 1:
    raise ValueError(f"deg must be >= 1, got {deg}")
  xs, ws = np.polynomial.hermite.hermgauss(int(deg))
  c, q1, q2 = jnp.broadcast_arrays(jnp.asarray(c), jnp.asarray(q1), jnp.asarray(q2))
  dtype = jnp.result_type(c.dtype, jnp.float32)
  x = jnp.asarray(xs, dtype)[:, None]
  y = jnp.asarray(xs, dtype)[None, :]
  grid = jnp.asarray(np.outer(ws, ws) / math.pi, dtype)
  q1s = jnp.maximum(q1, _TINY)[..., None, None]
  cc = c[..., None, None]
  cond = jnp.maximum(q2[..., None, None] - cc**2 / q1s, 0.0)
  u = jnp.sqrt(2.0 * q1s) * x
  v = cc * jnp.sqrt(2.0 / q1s) * x + jnp.sqrt(2.0 * cond) * y
  return jnp.sum(grid * f1(u) * f2(v), axis=(-2, -1))


def gauss_hermite_2d_lean(f1, f2, c, q1, q2, deg: int = 40):
  """E[f1(u) f2(v)], (u, v) ~ N(0, [[q1, c], [c, q2]]), 2-D Gauss-Hermite without grid arrays.

  Same rule as ``gauss_hermite_2d`` (and NT's ``ElementwiseNumerical``), but f1 (the x1 side) is
  evaluated once per ROW (u_i = sqrt(2 q1) x_i depends on q1 only), and the sum over the deg^2
  nodes is a ``fori_loop`` over i with an unrolled, fused sum over j: memory O(entries), not
  O(entries * deg^2) (NT materialises the (deg, deg, N1, N2) grid: 10 GB at N = 2,000, deg = 40).
  v_ij = (c / q1) u_i + s y_j with s^2 = ``conditional_variance`` (no cancellation).
  """
  import jax

  if int(deg) < 1:
    raise ValueError(f"deg must be >= 1, got {deg}")
  xs, ws = np.polynomial.hermite.hermgauss(int(deg))
  c, q1, q2 = jnp.asarray(c), jnp.asarray(q1), jnp.asarray(q2)
  dtype = jnp.result_type(c.dtype, q1.dtype, q2.dtype, jnp.float32)
  q1s = jnp.maximum(q1, _TINY).astype(dtype)
  w = jnp.asarray(ws / math.sqrt(math.pi), dtype)
  x = jnp.asarray(xs, dtype)
  f1_rows = f1(jnp.sqrt(2.0 * q1s)[None] * x.reshape((-1,) + (1,) * q1s.ndim))  # (deg, *q1.shape)
  slope = c * jnp.sqrt(2.0 / q1s)  # v_ij = slope x_i + spread y_j
  spread = jnp.sqrt(2.0 * conditional_variance(c, q1s, q2))
  shape = jnp.broadcast_shapes(c.shape, q1.shape, q2.shape)

  def body(i, acc):
    base = slope * x[i]
    inner = sum(w[j] * f2(base + spread * x[j]) for j in range(int(deg)))
    return acc + w[i] * f1_rows[i] * inner

  return jax.lax.fori_loop(0, int(deg), body, jnp.zeros(shape, dtype))


def gaussian_surrogate_dot(df, c, q1, q2, mass: float, var: float, deg: int = 40):
  """E[df(u) g(v)] for a Gaussian-type surrogate g = mass N(0, var): exact in v, 1-D in u.

  Integrating v | u ~ N(c u / q1, s2) against g gives mass N(c u / q1; 0, var + s2), so
  E = mass / sqrt(2 pi (var + s2)) * sum_k w_k df(u_k) exp(-x_k^2 c^2 / (q1 (var + s2))),
  u_k = sqrt(2 q1) x_k (Gauss-Hermite, ``deg`` nodes). df(u_k) is evaluated per row; the sum is
  one fused elementwise expression (no (deg, N1, N2) array).
  """
  if int(deg) < 1:
    raise ValueError(f"deg must be >= 1, got {deg}")
  xs, ws = np.polynomial.hermite.hermgauss(int(deg))
  c, q1, q2 = jnp.asarray(c), jnp.asarray(q1), jnp.asarray(q2)
  dtype = jnp.result_type(c.dtype, q1.dtype, q2.dtype, jnp.float32)
  q1s = jnp.maximum(q1, _TINY).astype(dtype)
  vs = var + conditional_variance(c, q1s, q2)
  gamma = c * c / (q1s * vs)
  us = jnp.sqrt(2.0 * q1s)
  total = 0.0
  for xk, wk in zip(xs, ws, strict=True):
    total = total + (wk / math.sqrt(math.pi)) * df(us * xk) * jnp.exp(-(xk * xk) * gamma)
  return mass / jnp.sqrt(2.0 * math.pi * vs) * total


def gauss_hermite_1d(f, q, deg: int = 40):
  """E[f(u)], u ~ N(0, q), Gauss-Hermite."""
  xs, ws = np.polynomial.hermite.hermgauss(int(deg))
  q = jnp.asarray(q)
  dtype = jnp.result_type(q.dtype, jnp.float32)
  u = jnp.sqrt(2.0 * jnp.maximum(q, 0.0))[..., None] * jnp.asarray(xs, dtype)
  return jnp.sum(jnp.asarray(ws / math.sqrt(math.pi), dtype) * f(u), axis=-1)


def analytic_sg_ntk(
  x1,
  x2=None,
  *,
  depth: int = 2,
  w_std: float = 1.0,
  b_std: float = 0.1,
  surrogate="erf",
  m: float | None = None,
  out_std: float | None = None,
):
  """NNGP Sigma and SG-NTK I of a fully connected sign / erf_m network by the direct recursion.

  The network is ``depth`` hidden layers of Dense(W_std=w_std, b_std=b_std) + activation, then a
  Dense read-out (scaled by ``out_std / w_std`` if given), NTK parametrisation, as
  ``stax.serial(*[Dense(n, w_std, b_std), SurrogateSign(...)] * depth, Dense(1, w_std, b_std))``.
  This is a reference independent of neural-tangents (spec section 2.4, vectorised algorithm).

  Args:
    x1: (N1, d) inputs, the true-derivative side.
    x2: (N2, d) inputs, the surrogate side (``None``: x1).
    depth: number of hidden layers.
    w_std, b_std: weight / bias standard deviations.
    surrogate: registry name or ``SurrogateDerivative``.
    m: erf(m x) as true activation; ``None`` means sign.
    out_std: optional read-out weight std (bias std scaled alike); default ``w_std``.

  Returns:
    ``(nngp, sg_ntk)``, both (N1, N2); ``sg_ntk[i, j] = I(x1_i, x2_j)``.
  """
  x1 = jnp.asarray(x1)
  x2 = x1 if x2 is None else jnp.asarray(x2)
  if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
    raise ValueError(f"inputs must be (N, d) with equal d, got {x1.shape} and {x2.shape}")
  g = _surrogates.get_surrogate(surrogate)
  a = erf_offset(m)
  d = x1.shape[1]
  ws2, bs2 = w_std**2, b_std**2
  s = ws2 * (x1 @ x2.T) / d + bs2
  q1 = ws2 * jnp.sum(x1**2, -1) / d + bs2
  q2 = ws2 * jnp.sum(x2**2, -1) / d + bs2
  ntk = s
  for layer in range(1, depth + 1):
    kappa2, beta2 = ws2, bs2
    if layer == depth and out_std is not None:
      kappa2, beta2 = out_std**2, bs2 * out_std**2 / ws2
    dot = sg_dot(s, q1[:, None], q2[None, :], g, a)
    s = kappa2 * arcsine_nngp(s, q1[:, None], q2[None, :], a) + beta2
    q1 = ws2 * arcsine_nngp_diag(q1, a) + bs2
    q2 = ws2 * arcsine_nngp_diag(q2, a) + bs2
    ntk = kappa2 * ntk * dot + s
  return s, ntk
