"""Surrogate derivatives for surrogate gradient learning, as a string-keyed registry.

Paper: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers,
Memmesheimer, Goedeke, NeurIPS 2024). In surrogate gradient learning (SGL) the derivative
sigma'(h) of a (possibly discontinuous) activation is replaced, in backpropagation only, by a
surrogate derivative g(h). Each surrogate here provides

* ``grad(x)``: g(x), used by finite networks in the backward pass;
* ``smoothed(s2)``: H_g(s2) = E[g(s xi)], xi ~ N(0, 1), s = sqrt(s2) -- closed form where one
  exists, else a Chebyshev fit built once and checked against float64 quadrature (precomputed
  for fast sigmoid and triangle; built on first use for any other surrogate, user-registered ones
  included: ``surrogate_fit``). It is all the SG-NTK needs for jump/erf-like true activations
  (see ``ntk/_src/kernels.py``);
* ``gaussian``: ``(mass, var)`` if g(v) = mass * N(v; 0, var), else ``None`` (enables the fully
  closed-form mixed kernel of spec section 2.5).

Usage::

  from ntk import get_surrogate
  g = get_surrogate("erf", beta=1.0)          # g(v) = beta * erf'(beta v)
  g = get_surrogate("fast_sigmoid", beta=5.0) # g(v) = 1 / (1 + beta |v|)^2

Registered names: ``erf(beta)``, ``gaussian(mass, width)``, ``fast_sigmoid(beta)``,
``triangle(width, mass)``, ``straight_through(scale)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

_SQRT_2PI = math.sqrt(2 * math.pi)
_TINY = 1e-30


def _check_positive(owner: str, **params: float) -> None:
  for name, value in params.items():
    try:
      v = float(value)
    except TypeError as e:
      raise ValueError(f"{owner}: parameter {name!r} must be a real number, got {value!r}") from e
    if not (math.isfinite(v) and v > 0):
      raise ValueError(f"{owner}: parameter {name!r} must be positive and finite, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SurrogateDerivative:
  """Base class: a surrogate derivative g. Subclasses are frozen (hashable, static) configs."""

  name: ClassVar[str] = "abstract"

  def grad(self, x):
    """g(x), the surrogate derivative used in the backward pass."""
    raise NotImplementedError

  @property
  def gaussian(self) -> tuple[float, float] | None:
    """``(mass, var)`` if g(v) = mass * N(v; 0, var), else ``None``."""
    return None

  @property
  def fit_scale(self) -> float:
    """A width over which g changes, in units of its argument (e.g. 1 / beta); a hint for the
    Chebyshev fit of H_g (``surrogate_fit``), which is valid for every s either way."""
    return 1.0

  @property
  def fit_kinks(self) -> tuple[float, ...]:
    """Points x > 0 where g is not smooth (e.g. the triangle's width); breakpoints for the
    reference quadrature of ``surrogate_fit`` (adaptive quadrature finds unlisted ones, slower)."""
    return ()

  def smoothed(self, s2):
    """H_g(s2) = E[g(sqrt(s2) xi)], xi ~ N(0, 1) (elementwise over ``s2 >= 0``).

    Default (any surrogate without a closed form, user-registered ones included): the Chebyshev
    fit ``surrogate_fit(self)``, built once per surrogate and checked against float64 adaptive
    quadrature (relative error <= GENERIC_FIT_REL_ERR_BOUND); if no fit meets the bound, the
    96-node half-line rule with a ``SurrogateFitWarning`` naming the error."""
    fit = surrogate_fit(self)
    if fit is None:
      return _half_line_quadrature(self.grad, s2)
    s = jnp.sqrt(jnp.maximum(jnp.asarray(s2), 0.0))
    return _clenshaw(fit.c, fit.coef, s / fit.scale)


# Gauss-Legendre nodes on [0, L] for 2 * int_0^L phi(x) g(s x) dx (g even). g may have a kink at 0
# (fast sigmoid, triangle) which spoils Gauss-Hermite on the full line; on the half line the
# integrand is smooth, and phi(L = 12) < 1e-31 makes the truncation negligible.
_GL_DEG = 96
_GL_L = 12.0


def _half_line_quadrature(g: Callable, s2):
  nodes, weights = np.polynomial.legendre.leggauss(_GL_DEG)
  x = 0.5 * _GL_L * (nodes + 1.0)
  w = 0.5 * _GL_L * weights * 2.0 * np.exp(-0.5 * x**2) / _SQRT_2PI
  s = jnp.sqrt(jnp.maximum(jnp.asarray(s2), 0.0))
  x = jnp.asarray(x, s.dtype)
  w = jnp.asarray(w, s.dtype)
  vals = g(s[..., None] * x)
  return jnp.sum(vals * w, axis=-1)


# ------------------------------------------------------------------ Chebyshev fits of H_g
#
# For a surrogate of the form g(x) = out * h(x / scale) with a fixed "shape" h (fast sigmoid:
# h(y) = 1 / (1 + |y|)^2, scale = 1 / beta; triangle: h(y) = max(0, 1 - |y|), scale = width),
# H_g(s2) = out * H_h(t), t = s / scale, H_h(t) = E[h(t xi)]. H_h is fitted ONCE per shape:
# R(u) = (1 + t) H_h(t) on u = (t - c) / (t + c) in [-1, 1] (t in [0, inf): the factor (1 + t)
# removes H_h's 1/t tail, so R is bounded and smooth up to u = 1, i.e. t = infinity) by a
# degree-FIT_DEG Chebyshev interpolant at Chebyshev nodes, the node values from adaptive float64
# quadrature (scipy.integrate.quad, relative tolerance 1e-13). Evaluation is a Clenshaw recurrence:
# FIT_DEG multiply-adds per kernel entry instead of 96 surrogate evaluations, and no loss of
# accuracy at large beta * s (the 96-node rule degrades to 5e-4 at beta * s = 100).
#
# Error bound (FIT_REL_ERR_BOUND): max |fit / H - 1| over t in [0, 1e4] (log- and linearly spaced,
# 400 points, reference: mpmath tanh-sinh quadrature at 30 digits) measured 8e-8 (fast sigmoid,
# c = 3) and 2e-8 (triangle, c = 0.5) at FIT_DEG = 32; degree 24 gave 2.5e-7 / 5e-7. The bound is
# tested in tests/ntk/test_kernels.py::test_chebyshev_fit_error_bound.
FIT_DEG = 32
FIT_REL_ERR_BOUND = 2e-7


def _unit_fast_sigmoid(y: float) -> float:
  return 1.0 / (1.0 + abs(y)) ** 2


def _unit_triangle(y: float) -> float:
  return max(0.0, 1.0 - abs(y))


# shape name -> (h as a float -> float function, kinks of h on y > 0, map constant c)
_SHAPES: dict[str, tuple[Callable[[float], float], tuple[float, ...], float]] = {
  "fast_sigmoid": (_unit_fast_sigmoid, (), 3.0),
  "triangle": (_unit_triangle, (1.0,), 0.5),
}


def reference_smoothing(h: Callable[[float], float], t: float, kinks=()) -> float:
  """H_h(t) = E[h(t xi)] = 2 int_0^inf phi(x) h(t x) dx (h even) by adaptive float64 quadrature."""
  import scipy.integrate

  if t == 0.0:
    return float(h(0.0))
  phi2 = lambda x: 2.0 * math.exp(-0.5 * x * x) / _SQRT_2PI
  if t <= 1.0:
    pts = [k / t for k in kinks if k / t < 40.0]
    f = lambda x: phi2(x) * h(t * x)
    return scipy.integrate.quad(
      f, 0.0, 40.0, points=pts or None, epsabs=0.0, epsrel=1e-13, limit=500
    )[0]
  up = 40.0 * t  # phi(40) ~ 1e-348: nothing beyond
  pts = sorted(p for p in (*kinks, 1.0, 10.0, 100.0, 1000.0) if p < up)
  f = lambda y: phi2(y / t) * h(y) / t
  return scipy.integrate.quad(f, 0.0, up, points=pts, epsabs=0.0, epsrel=1e-13, limit=1000)[0]


# Precomputed chebyshev_fit(shape) at FIT_DEG (float64 repr); tests/ntk/test_kernels.py checks that
# rebuilding reproduces them.
_PRECOMPUTED: dict[str, tuple[float, tuple[float, ...]]] = {
  "fast_sigmoid": (
    3.0,
    (
      0.8359499778663789,
      -0.07451612265620751,
      0.05091740981844178,
      -0.021377554193690924,
      0.009702755753135088,
      -0.004130885897813737,
      0.001880616682835571,
      -0.0008184796628442096,
      0.0003837420673965438,
      -0.00016898976469459075,
      8.255668832721304e-05,
      -3.607301506768069e-05,
      1.8758395571058208e-05,
      -7.817812017619701e-06,
      4.549096535207067e-06,
      -1.6509288108384123e-06,
      1.210083749307303e-06,
      -2.985021420962171e-07,
      3.7097492969620743e-07,
      -1.5325793940682427e-08,
      1.38487685475535e-07,
      3.198815386808555e-08,
      6.384251834394716e-08,
      3.081118733765302e-08,
      3.461402936260024e-08,
      2.23584850100339e-08,
      2.044012224562333e-08,
      1.4734288077930587e-08,
      1.2156530805106383e-08,
      8.816304613467793e-09,
      6.507969509137433e-09,
      4.114307310851189e-09,
      2.052940453198808e-09,
    ),
  ),
  "triangle": (
    0.5,
    (
      0.7879980482248968,
      -0.32096348142203474,
      -0.10322666155493088,
      0.023581363096588853,
      0.0178679105836101,
      -0.003941392188608244,
      -0.003948609200928225,
      0.0010690770313759735,
      0.0009808656081691566,
      -0.00038289616418301156,
      -0.0002481038277593298,
      0.00015233041483813615,
      5.541099512634707e-05,
      -6.081737873276402e-05,
      -6.5041836538552545e-06,
      2.2843614592414326e-05,
      -3.2717816193447713e-06,
      -7.524999099221351e-06,
      3.35016737176982e-06,
      1.8620943802439223e-06,
      -1.884632234728238e-06,
      -1.0600583673663805e-07,
      7.866675929254543e-07,
      -2.412309280741022e-07,
      -2.3030456134924986e-07,
      1.8863119064274971e-07,
      2.0570896366871628e-08,
      -8.77485809215729e-08,
      2.784130580687095e-08,
      2.611156126326043e-08,
      -2.2894334198638312e-08,
      -3.3400982603959157e-09,
      1.2532657778901429e-08,
    ),
  ),
}


@functools.cache
def build_chebyshev_fit(shape: str, deg: int = FIT_DEG) -> tuple[float, tuple[float, ...]]:
  """``(c, coefficients)`` of the Chebyshev interpolant of R(u) = (1 + t) H_h(t) (float64, cached)."""
  h, kinks, c = _SHAPES[shape]
  n = deg + 1
  u = np.cos(np.pi * (np.arange(n) + 0.5) / n)
  t = c * (1.0 + u) / (1.0 - u)
  r = np.array([(1.0 + ti) * reference_smoothing(h, float(ti), kinks) for ti in t])
  coef = np.polynomial.chebyshev.chebfit(u, r, deg)
  return c, tuple(float(a) for a in coef)


def chebyshev_fit(shape: str) -> tuple[float, tuple[float, ...]]:
  """``(c, coefficients)`` of the fit of ``shape`` at FIT_DEG (precomputed, else built once)."""
  if shape in _PRECOMPUTED:
    return _PRECOMPUTED[shape]
  return build_chebyshev_fit(shape)


def eval_fit(shape: str, t):
  """H_h(t) from the Chebyshev fit, elementwise over ``t >= 0`` (dtype of ``t``)."""
  c, coef = chebyshev_fit(shape)
  return _clenshaw(c, coef, t)


def _clenshaw(c: float, coef, t):
  """R(u) / (1 + t), u = (t - c) / (t + c), R = sum_k coef_k T_k(u) (Clenshaw), over t >= 0."""
  t = jnp.asarray(t)
  u = 1.0 - (2.0 * c) / (t + c)  # = (t - c) / (t + c); t = inf -> u = 1
  u2 = 2.0 * u
  b1 = jnp.zeros_like(u)
  b2 = jnp.zeros_like(u)
  for a in coef[:0:-1]:  # Clenshaw
    b1, b2 = a + u2 * b1 - b2, b1
  r = coef[0] + u * b1 - b2
  return r / (1.0 + t)


# ------------------------------------------------ fits for any surrogate (user-registered too)
#
# A surrogate without a closed form or a precomputed shape fit (every user-registered one) gets the
# same kind of fit, built once per surrogate instance (cached; instances are frozen dataclasses):
# h(y) = (g(scale y) + g(-scale y)) / 2 (scale = ``fit_scale``; the symmetrisation makes
# E[g(s xi)] = E[h(s xi / scale)] exact for non-even g too), R(u) = (1 + t) H_h(t) on
# u = (t - 1) / (t + 1), interpolated at GENERIC_FIT_DEGS[0] + 1 Chebyshev nodes with node values
# from float64 adaptive quadrature (``reference_smoothing_many``, relative tolerance 1e-13). The fit
# is then CHECKED against that quadrature at GENERIC_FIT_CHECK_T (t = 0 and 49 log-spaced points
# in [1e-4, 1e4], i.e. s / scale over eight decades; beyond 1e4 the fit's u = 1 end is the exact
# limit). If the largest relative error exceeds GENERIC_FIT_REL_ERR_BOUND the next degree is tried;
# if none meets it (g not integrable: H_g does not decay like 1 / s, e.g. a constant), the layer
# falls back to the 96-node half-line rule and says so with a ``SurrogateFitWarning``. The
# measured error is kept on the fit (``surrogate_fit(g).max_rel_err``).
GENERIC_FIT_DEGS = (32, 64)
GENERIC_FIT_REL_ERR_BOUND = 1e-6
GENERIC_FIT_CHECK_T = (0.0, *np.logspace(-4.0, 4.0, 49).tolist())


class SurrogateFitWarning(UserWarning):
  """No Chebyshev fit of H_g met GENERIC_FIT_REL_ERR_BOUND; the 96-node rule is used instead."""


@dataclasses.dataclass(frozen=True)
class SmoothingFit:
  """H_g(s2) = R(u(t)) / (1 + t), t = sqrt(s2) / scale (see ``surrogate_fit``)."""

  scale: float
  c: float
  coef: tuple[float, ...]
  max_rel_err: float  # measured at GENERIC_FIT_CHECK_T against float64 adaptive quadrature


def reference_smoothing_many(h: Callable[[np.ndarray], np.ndarray], ts, kinks=()) -> np.ndarray:
  """H_h(t) = 2 int_0^inf phi(x) h(t x) dx for every t in ``ts`` (h even, vectorised over numpy
  float64 arrays), by ``scipy.integrate.quad_vec`` (relative tolerance 1e-13): x-coordinates for
  t <= 1, y = t x (h's own coordinates, breakpoints at its kinks and at every decade) for t > 1."""
  import scipy.integrate

  ts = np.asarray(ts, np.float64)
  out = np.empty_like(ts)
  out[ts == 0] = float(np.asarray(h(np.zeros(1)))[0])
  phi2 = lambda x: 2.0 * np.exp(-0.5 * x * x) / _SQRT_2PI
  small = (ts > 0) & (ts <= 1)
  if small.any():
    t = ts[small]
    pts = sorted({k / ti for k in kinks for ti in t if k / ti < 40.0})
    f = lambda x: phi2(x) * np.asarray(h(t * x), np.float64)
    out[small] = scipy.integrate.quad_vec(
      f, 0.0, 40.0, epsabs=0.0, epsrel=1e-13, points=pts or None, limit=20000
    )[0]
  big = ts > 1
  if big.any():
    t = ts[big]
    up = 40.0 * float(t.max())
    decades = [10.0**k for k in range(0, int(math.log10(up)) + 1)]
    pts = sorted({p for p in (*kinks, *decades, *t.tolist()) if 0 < p < up})
    f = lambda y: phi2(y / t) / t * float(np.asarray(h(np.full(1, y)), np.float64)[0])
    out[big] = scipy.integrate.quad_vec(
      f, 0.0, up, epsabs=0.0, epsrel=1e-13, points=pts, limit=20000
    )[0]
  return out


def _float64_unit_shape(g: SurrogateDerivative) -> Callable[[np.ndarray], np.ndarray]:
  """h(y) = (g(scale y) + g(-scale y)) / 2 evaluated eagerly in float64 (also under a trace)."""
  import jax

  scale = float(g.fit_scale)

  def h(y):
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
      y = jnp.asarray(np.asarray(y, np.float64) * scale)
      return np.asarray(0.5 * (g.grad(y) + g.grad(-y)), np.float64)

  return h


@functools.cache
def surrogate_fit(g: SurrogateDerivative) -> SmoothingFit | None:
  """The checked Chebyshev fit of H_g for any surrogate (built once per instance), or ``None``
  (with a ``SurrogateFitWarning``) if no degree in GENERIC_FIT_DEGS meets the bound."""
  import warnings

  scale = float(g.fit_scale)
  if not (math.isfinite(scale) and scale > 0):
    raise ValueError(f"{g}: fit_scale must be positive and finite, got {scale!r}")
  h = _float64_unit_shape(g)
  kinks = tuple(float(k) / scale for k in g.fit_kinks)
  check_t = np.asarray(GENERIC_FIT_CHECK_T)
  ref = reference_smoothing_many(h, check_t, kinks)
  if not np.all(np.isfinite(ref)) or np.any(ref <= 0):
    raise ValueError(f"{g}: E[g(s xi)] is not finite and positive over s (g must be >= 0)")
  c, err = 1.0, math.inf
  for deg in GENERIC_FIT_DEGS:
    n = deg + 1
    u = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    t = c * (1.0 + u) / (1.0 - u)
    coef = np.polynomial.chebyshev.chebfit(
      u, (1.0 + t) * reference_smoothing_many(h, t, kinks), deg
    )
    uc = (check_t - c) / (check_t + c)
    got = np.polynomial.chebyshev.chebval(uc, coef) / (1.0 + check_t)
    err = float(np.max(np.abs(got / ref - 1.0)))
    if err <= GENERIC_FIT_REL_ERR_BOUND:
      return SmoothingFit(scale, c, tuple(float(a) for a in coef), err)
  warnings.warn(
    f"{g}: no Chebyshev fit of E[g(s xi)] within {GENERIC_FIT_REL_ERR_BOUND:g} (best relative "
    f"error {err:.2g} at degree {GENERIC_FIT_DEGS[-1]}); using the {_GL_DEG}-node half-line rule "
    "(override smoothed() with a closed form, or set fit_scale / fit_kinks)",
    SurrogateFitWarning,
    stacklevel=3,
  )
  return None


@dataclasses.dataclass(frozen=True)
class ErfSurrogate(SurrogateDerivative):
  """g(v) = beta * erf'(beta v) = (2 beta / sqrt(pi)) exp(-beta^2 v^2) (mass 2, as sign's jump)."""

  beta: float = 1.0
  name: ClassVar[str] = "erf"

  def __post_init__(self):
    _check_positive("erf surrogate", beta=self.beta)

  def grad(self, x):
    return (2.0 * self.beta / math.sqrt(math.pi)) * jnp.exp(-((self.beta * x) ** 2))

  @property
  def gaussian(self):
    return 2.0, 1.0 / (2.0 * self.beta**2)

  def smoothed(self, s2):
    mass, var = self.gaussian
    return mass / jnp.sqrt(2 * math.pi * (var + jnp.maximum(s2, 0.0)))


@dataclasses.dataclass(frozen=True)
class GaussianSurrogate(SurrogateDerivative):
  """g(v) = mass * N(v; 0, width^2)."""

  mass: float = 2.0
  width: float = 1.0
  name: ClassVar[str] = "gaussian"

  def __post_init__(self):
    _check_positive("gaussian surrogate", mass=self.mass, width=self.width)

  def grad(self, x):
    return self.mass * jnp.exp(-0.5 * (x / self.width) ** 2) / (_SQRT_2PI * self.width)

  @property
  def gaussian(self):
    return float(self.mass), float(self.width) ** 2

  def smoothed(self, s2):
    return self.mass / jnp.sqrt(2 * math.pi * (self.width**2 + jnp.maximum(s2, 0.0)))


@dataclasses.dataclass(frozen=True)
class FastSigmoidSurrogate(SurrogateDerivative):
  """SuperSpike / fast sigmoid: g(v) = 1 / (1 + beta |v|)^2 (mass 2 / beta). Chebyshev-fit kernel."""

  beta: float = 1.0
  name: ClassVar[str] = "fast_sigmoid"

  def __post_init__(self):
    _check_positive("fast_sigmoid surrogate", beta=self.beta)

  def grad(self, x):
    return 1.0 / (1.0 + self.beta * jnp.abs(x)) ** 2

  def smoothed(self, s2):
    # Chebyshev fit of H(t), t = beta s (see FIT_REL_ERR_BOUND).
    return eval_fit("fast_sigmoid", self.beta * jnp.sqrt(jnp.maximum(jnp.asarray(s2), 0.0)))


@dataclasses.dataclass(frozen=True)
class TriangleSurrogate(SurrogateDerivative):
  """g(v) = (mass / width) * max(0, 1 - |v| / width). Chebyshev-fit smoothing."""

  width: float = 1.0
  mass: float = 2.0
  name: ClassVar[str] = "triangle"

  def __post_init__(self):
    _check_positive("triangle surrogate", width=self.width, mass=self.mass)

  def grad(self, x):
    return (self.mass / self.width) * jnp.maximum(0.0, 1.0 - jnp.abs(x) / self.width)

  def smoothed(self, s2):
    # Chebyshev fit of H(t), t = s / width (see FIT_REL_ERR_BOUND). The closed form
    # erf(r / sqrt 2) - (2 / r)(phi(0) - phi(r)), r = width / s, cancels for s >> width (float32
    # relative error 1e-3 at s = 100 width) and costs more.
    s = jnp.sqrt(jnp.maximum(jnp.asarray(s2), 0.0))
    return (self.mass / self.width) * eval_fit("triangle", s / self.width)

  def smoothed_closed_form(self, s2):
    """E[max(0, 1 - s|xi|/w)] = erf(w / (s sqrt 2)) - (2 s / w)(phi(0) - phi(w / s)), times
    mass / width (exact; kept as a reference)."""
    s = jnp.sqrt(jnp.maximum(s2, _TINY))
    r = self.width / s
    phi0 = 1.0 / _SQRT_2PI
    val = erf(r / math.sqrt(2.0)) - (2.0 / r) * (phi0 - jnp.exp(-0.5 * r**2) / _SQRT_2PI)
    return (self.mass / self.width) * val


@dataclasses.dataclass(frozen=True)
class StraightThroughSurrogate(SurrogateDerivative):
  """Straight-through estimator: g(v) = scale (the authors' "id" surrogate for scale = 1)."""

  scale: float = 1.0
  name: ClassVar[str] = "straight_through"

  def __post_init__(self):
    _check_positive("straight_through surrogate", scale=self.scale)

  def grad(self, x):
    return jnp.full_like(x, self.scale)

  def smoothed(self, s2):
    return jnp.full_like(jnp.asarray(s2), self.scale)


SURROGATES: dict[str, type[SurrogateDerivative]] = {}


def register_surrogate(cls: type[SurrogateDerivative]) -> type[SurrogateDerivative]:
  """Adds a ``SurrogateDerivative`` subclass to the registry under ``cls.name``."""
  if not (isinstance(cls, type) and issubclass(cls, SurrogateDerivative)):
    raise ValueError(f"expected a SurrogateDerivative subclass, got {cls!r}")
  SURROGATES[cls.name] = cls
  return cls


for _cls in (
  ErfSurrogate,
  GaussianSurrogate,
  FastSigmoidSurrogate,
  TriangleSurrogate,
  StraightThroughSurrogate,
):
  register_surrogate(_cls)


def get_surrogate(surrogate: str | SurrogateDerivative = "erf", **params) -> SurrogateDerivative:
  """Returns a surrogate derivative from a registry name (plus parameters) or passes one through.

  Raises:
    ValueError: unknown name, unknown parameter, or a non-positive parameter.
  """
  if isinstance(surrogate, SurrogateDerivative):
    if params:
      raise ValueError("parameters given together with a SurrogateDerivative instance")
    return surrogate
  if not isinstance(surrogate, str) or surrogate not in SURROGATES:
    raise ValueError(f"unknown surrogate {surrogate!r}; known: {sorted(SURROGATES)}")
  cls = SURROGATES[surrogate]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(params) - fields
  if unknown:
    raise ValueError(
      f"surrogate {surrogate!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(fields)}"
    )
  return cls(**params)
