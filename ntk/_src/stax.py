"""Surrogate-gradient activation layers for ``neural_tangents.stax.serial``.

Paper: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers,
Memmesheimer, Goedeke, NeurIPS 2024).

Each layer is an NT triple ``(init_fn, apply_fn, kernel_fn)``:

* ``apply_fn(params, x, surrogate_weight=1.0)``: forward pass with the *true* activation; the
  backward pass (a ``jax.custom_jvp``) uses ``(1 - w) sigma'(x) + w g(x)`` with
  ``w = surrogate_weight``: 1 (default) is surrogate gradient learning, 0 the true gradient.
  NT splits 2-tuples of keyword arguments between the x1 and x2 sides, which is how
  ``ntk.empirical_sg_ntk_fn`` builds J(x1) J~(x2)^T.
* ``kernel_fn(x1, x2, ("nngp", "ntk"))``: ``nngp`` is the NNGP of the true activation, ``ntk`` is
  the SG-NTK I(x1, x2) with **x1 the true-derivative side and x2 the surrogate side**. I is not
  symmetric in general: I(x1, x2) != I(x2, x1)^T unless Sigma(x, x) is constant over the inputs
  (e.g. inputs on a sphere). ``kernel_fn(x1, None, "ntk")`` is I(X, X) with rows on the true side.

Usage::

  from neural_tangents import stax
  import ntk
  init_fn, apply_fn, kernel_fn = stax.serial(
      stax.Dense(512, W_std=1.0, b_std=0.1), ntk.stax.SurrogateSign(surrogate="erf"),
      stax.Dense(512, W_std=1.0, b_std=0.1), ntk.stax.SurrogateSign(surrogate="erf"),
      stax.Dense(1, W_std=1.0, b_std=0.1))
  k = kernel_fn(x_test, x_train, ("nngp", "ntk"))   # k.ntk = I(x_test, x_train)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from . import compat
from . import kernels as _k
from . import surrogates as _surrogates

nt = compat.import_neural_tangents()
nt_stax = nt.stax
from neural_tangents._src.stax.requirements import get_diagonal as _get_diagonal  # noqa: E402
from neural_tangents._src.utils import utils as _nt_utils  # noqa: E402

SURROGATE_KWARG = "surrogate_weight"


def _sg_activation(fn: Callable, true_grad: Callable, g: Callable) -> Callable:
  """fn with backward derivative ``(1 - w) * true_grad + w * g`` (``w`` not differentiated)."""

  @jax.custom_jvp
  def act(x, w):
    return fn(x)

  @act.defjvp
  def _act_jvp(primals, tangents):
    x, w = primals
    dx, _ = tangents
    w = jnp.asarray(w, x.dtype)
    deriv = (1.0 - w) * true_grad(x) + w * g(x)
    return fn(x), deriv * dx

  return act


def _make_layer(
  name: str,
  fn: Callable,
  true_grad: Callable,
  surrogate: _surrogates.SurrogateDerivative,
  nngp_fn: Callable,
  nngp_diag_fn: Callable,
  dot_fn: Callable,
):
  """Builds the NT triple from elementwise kernel maps ``(c, q1, q2) -> value``."""
  act = _sg_activation(fn, true_grad, surrogate.grad)

  def init_fn(rng, input_shape):
    del rng
    return input_shape, ()

  def apply_fn(params, inputs, **kwargs):
    del params
    return act(inputs, kwargs.get(SURROGATE_KWARG, 1.0))

  @nt_stax.requires(diagonal_spatial=nt_stax.Diagonal())
  def kernel_fn(k, **kwargs):
    del kwargs
    if not k.is_gaussian:
      raise ValueError(
        f"{name}: the input to the activation must be Gaussian, i.e. a random affine layer "
        "(stax.Dense / stax.Conv) is required before it."
      )
    cov1, nngp, cov2, ntk = k.cov1, k.nngp, k.cov2, k.ntk
    d1 = _get_diagonal(cov1, k.diagonal_batch, k.diagonal_spatial)
    d2 = _get_diagonal(cov2, k.diagonal_batch, k.diagonal_spatial)
    end = 1 if k.diagonal_spatial else cov1.ndim
    q1 = _nt_utils.interleave_ones(d1, 0, end, True)
    q2 = _nt_utils.interleave_ones(d1 if d2 is None else d2, 0, end, False)
    if ntk is not None:
      ntk = ntk * dot_fn(nngp, q1, q2)
    nngp = nngp_fn(nngp, q1, q2)

    def update_cov(cov, d):
      if cov is None:
        return None
      if k.diagonal_batch and k.diagonal_spatial:
        return nngp_diag_fn(cov)
      start = 1 if k.diagonal_batch else 0
      a1 = _nt_utils.interleave_ones(d, start, end, True)
      a2 = _nt_utils.interleave_ones(d, start, end, False)
      return nngp_fn(cov, a1, a2)

    cov1 = update_cov(cov1, d1)
    cov2 = update_cov(cov2, d2)
    return k.replace(cov1=cov1, nngp=nngp, cov2=cov2, ntk=ntk, is_gaussian=False)

  init_fn.__name__ = apply_fn.__name__ = kernel_fn.__name__ = name
  return init_fn, apply_fn, kernel_fn


def _erf_m_layer(m: float | None, surrogate, name: str):
  g = _surrogates.get_surrogate(surrogate)
  a = _k.erf_offset(m)
  if m is None:
    fn = jnp.sign

    def true_grad(x):
      return jnp.zeros_like(x)
  else:
    fn = lambda x: erf(m * x)

    def true_grad(x):
      return (2.0 * m / math.sqrt(math.pi)) * jnp.exp(-((m * x) ** 2))

  return _make_layer(
    name,
    fn,
    true_grad,
    g,
    nngp_fn=lambda c, q1, q2: _k.arcsine_nngp(c, q1, q2, a),
    nngp_diag_fn=lambda q: _k.arcsine_nngp_diag(q, a),
    dot_fn=lambda c, q1, q2: _k.sg_dot(c, q1, q2, g, a),
  )


@nt_stax.layer
@nt_stax.supports_masking(remask_kernel=True)
def SurrogateSign(surrogate="erf", **surrogate_params):
  """sign forward pass, surrogate backward pass; kernel = (NNGP of sign, SG-NTK).

  Args:
    surrogate: registry name (``"erf"``, ``"gaussian"``, ``"fast_sigmoid"``, ``"triangle"``,
      ``"straight_through"``) or a ``SurrogateDerivative``.
    **surrogate_params: parameters of a named surrogate, e.g. ``beta=1.0``.

  Returns:
    ``(init_fn, apply_fn, kernel_fn)``. ``kernel_fn(x1, x2, "ntk")[i, j] = I(x1_i, x2_j)``, true
    derivative (the distributional 2 delta) on the x1 side, surrogate on the x2 side; asymmetric.
  """
  g = _surrogates.get_surrogate(surrogate, **surrogate_params)
  return _erf_m_layer(None, g, f"SurrogateSign({g})")


@nt_stax.layer
@nt_stax.supports_masking(remask_kernel=True)
def SurrogateErf(m: float = 1.0, surrogate="erf", **surrogate_params):
  """erf(m x) forward pass (true derivative m erf'(m x)), surrogate backward pass.

  As m -> infinity the SG-NTK of this layer converges to that of ``SurrogateSign`` (the naive
  NTK of ``stax.Erf(1, m, 0)`` instead diverges on the diagonal).

  Args:
    m: input scale of the true activation, > 0.
    surrogate: registry name or ``SurrogateDerivative``.
    **surrogate_params: parameters of a named surrogate.
  """
  _k.erf_offset(m)  # validates m
  g = _surrogates.get_surrogate(surrogate, **surrogate_params)
  return _erf_m_layer(float(m), g, f"SurrogateErf({m}, {g})")


@nt_stax.layer
@nt_stax.supports_masking(remask_kernel=True)
def Surrogate(
  fn: Callable,
  surrogate="erf",
  *,
  true_grad: Callable | None = None,
  nngp_fn: Callable | None = None,
  deg: int = 40,
  **surrogate_params,
):
  """A general smooth activation ``fn`` with a surrogate derivative in the backward pass.

  The NNGP E[fn(u) fn(v)] is ``nngp_fn(c, q1, q2)`` if given, else 2-D Gauss-Hermite quadrature
  (``deg`` nodes per axis, the rule of NT's ``ElementwiseNumerical``). The mixed kernel
  E[fn'(u) g(v)] is exact in v and 1-D Gauss-Hermite in u when g is Gaussian-type (``erf``,
  ``gaussian``: ``kernels.gaussian_surrogate_dot``), else 2-D Gauss-Hermite. Both quadratures
  evaluate the true-activation side once per row and keep memory at O(entries)
  (``kernels.gauss_hermite_2d_lean``); accuracy depends on the smoothness of fn' and g (for
  jumps use ``SurrogateSign``).

  Args:
    fn: elementwise activation (jax-traceable).
    surrogate: registry name or ``SurrogateDerivative``.
    true_grad: fn' (default: ``jax.grad`` of ``fn``, vectorised).
    nngp_fn: optional closed form ``(cov12, var1, var2) -> E[fn(u) fn(v)]``.
    deg: quadrature nodes per dimension, >= 1.
    **surrogate_params: parameters of a named surrogate.
  """
  if not callable(fn):
    raise ValueError(f"fn must be callable, got {fn!r}")
  if int(deg) < 1:
    raise ValueError(f"deg must be >= 1, got {deg}")
  g = _surrogates.get_surrogate(surrogate, **surrogate_params)
  if true_grad is None:
    true_grad = jnp.vectorize(jax.grad(fn))
  if nngp_fn is None:
    nngp = lambda c, q1, q2: _k.gauss_hermite_2d_lean(fn, fn, c, q1, q2, deg)
  else:
    nngp = nngp_fn
  diag = lambda q: (
    nngp(q, q, q) if nngp_fn is not None else _k.gauss_hermite_1d(lambda u: fn(u) ** 2, q, deg)
  )
  if g.gaussian is not None:
    mass, var = g.gaussian
    dot = lambda c, q1, q2: _k.gaussian_surrogate_dot(true_grad, c, q1, q2, mass, var, deg)
  else:
    dot = lambda c, q1, q2: _k.gauss_hermite_2d_lean(true_grad, g.grad, c, q1, q2, deg)
  name = f"Surrogate({getattr(fn, '__name__', fn)}, {g}, deg={deg})"
  return _make_layer(name, fn, true_grad, g, nngp, diag, dot)
