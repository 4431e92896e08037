"""Surrogate derivatives for surrogate gradient learning, as a string-keyed registry.

Paper: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers,
Memmesheimer, Goedeke, NeurIPS 2024). In surrogate gradient learning (SGL) the derivative
sigma'(h) of a (possibly discontinuous) activation is replaced, in backpropagation only, by a
surrogate derivative g(h). Each surrogate here provides

* ``grad(x)``: g(x), used by finite networks in the backward pass;
* ``smoothed(s2)``: H_g(s2) = E[g(s xi)], xi ~ N(0, 1), s = sqrt(s2) -- closed form where one
  exists, quadrature otherwise. It is all the SG-NTK needs for jump/erf-like true activations
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

  def smoothed(self, s2):
    """H_g(s2) = E[g(sqrt(s2) xi)], xi ~ N(0, 1) (elementwise over ``s2 >= 0``)."""
    return _half_line_quadrature(self.grad, s2)


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
  """SuperSpike / fast sigmoid: g(v) = 1 / (1 + beta |v|)^2 (mass 2 / beta). Quadrature kernel."""

  beta: float = 1.0
  name: ClassVar[str] = "fast_sigmoid"

  def __post_init__(self):
    _check_positive("fast_sigmoid surrogate", beta=self.beta)

  def grad(self, x):
    return 1.0 / (1.0 + self.beta * jnp.abs(x)) ** 2


@dataclasses.dataclass(frozen=True)
class TriangleSurrogate(SurrogateDerivative):
  """g(v) = (mass / width) * max(0, 1 - |v| / width). Closed-form smoothing."""

  width: float = 1.0
  mass: float = 2.0
  name: ClassVar[str] = "triangle"

  def __post_init__(self):
    _check_positive("triangle surrogate", width=self.width, mass=self.mass)

  def grad(self, x):
    return (self.mass / self.width) * jnp.maximum(0.0, 1.0 - jnp.abs(x) / self.width)

  def smoothed(self, s2):
    # E[max(0, 1 - s|xi|/w)] = erf(w / (s sqrt 2)) - (2 s / w) (phi(0) - phi(w / s)).
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
