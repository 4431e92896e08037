"""Finite-width surrogate-gradient networks and the empirical SG-NTK J(x1) J~(x2)^T.

Paper: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers,
Memmesheimer, Goedeke, NeurIPS 2024). Surrogate gradient learning follows
d theta / dt = -eta J~(X)^T grad_f L, so the network output moves with the empirical SG-NTK
I_hat(x, x') = J(x) J~(x')^T: the true Jacobian at the evaluation point x, the surrogate
("quasi") Jacobian at the training point x'.

Usage::

  import ntk
  init_fn, apply_fn, kernel_fn = ntk.sg_mlp(width=512, depth=2, m=5.0, surrogate="erf")
  _, params = init_fn(key, x1.shape)
  sg_ntk = ntk.empirical_sg_ntk_fn(apply_fn)(x1, x2, params)     # (N1, N2)
"""

from __future__ import annotations

import functools

import numpy as np

from . import compat
from . import stax as _sg_stax

nt = compat.import_neural_tangents()


def empirical_sg_ntk_fn(
  apply_fn,
  *,
  trace_axes=(-1,),
  diagonal_axes=(),
  vmap_axes=0,
  implementation: int = 1,
):
  """Returns ``fn(x1, x2, params, **kwargs) -> J(x1) J~(x2)^T`` (empirical SG-NTK).

  ``apply_fn(params, x, surrogate_weight=w, **kwargs)`` must switch its backward derivative with
  the keyword ``surrogate_weight`` (0: true derivative, 1: surrogate), as every ``ntk.stax``
  layer inside ``stax.serial`` does. Built on ``neural_tangents.empirical_ntk_fn``, which sends
  the two halves of a 2-tuple keyword argument to the x1 and x2 sides.

  Args:
    apply_fn: network apply function.
    trace_axes, diagonal_axes, vmap_axes: as in ``neural_tangents.empirical_ntk_fn``.
    implementation: 1 (Jacobian contraction), 2 (NTK-vector products), 3 (structured
      derivatives, NT's default) or 0 (AUTO: the cheapest of 1-3 by XLA's FLOP estimate).

  Returns:
    ``fn(x1, x2, params, **kwargs)``; ``x2=None`` means x2 = x1 (the result is still the
    asymmetric J(x1) J~(x1)^T).
  """
  if implementation not in (0, 1, 2, 3) or isinstance(implementation, bool):
    raise ValueError(
      "implementation must be 0 (AUTO), 1 (Jacobian contraction), 2 (NTK-vector products) or "
      f"3 (structured derivatives), got {implementation!r}"
    )
  ntk_fn = nt.empirical_ntk_fn(
    apply_fn,
    trace_axes=trace_axes,
    diagonal_axes=diagonal_axes,
    vmap_axes=vmap_axes,
    implementation=implementation,
  )
  key = _sg_stax.SURROGATE_KWARG

  def fn(x1, x2, params, **kwargs):
    if key in kwargs:
      raise ValueError(f"{key!r} is set by empirical_sg_ntk_fn (true side x1, surrogate side x2)")
    if x2 is None:
      x2 = x1
    s1, s2 = np.shape(x1), np.shape(x2)
    if s1[1:] != s2[1:]:
      raise ValueError(f"x1 and x2 must have the same feature shape, got {s1} and {s2}")
    kwargs[key] = (0.0, 1.0)
    return ntk_fn(x1, x2, params, **kwargs)

  return fn


def sg_mlp(
  width: int,
  depth: int = 2,
  *,
  m: float | None = None,
  surrogate="erf",
  w_std: float = 1.0,
  b_std: float = 0.1,
  out_dim: int = 1,
  out_std: float | None = None,
  **surrogate_params,
):
  """Fully connected SGL network: ``depth`` x [Dense(width), activation], then Dense(out_dim).

  Activation: sign (``m=None``, ``SurrogateSign``) or erf(m x) (``SurrogateErf``), surrogate
  derivative in the backward pass. NTK parametrisation, as in the paper (sigma_w = 1,
  sigma_b = 0.1). ``out_std`` scales the read-out layer (the paper's kappa: ``kappa * w_std``;
  the read-out bias std is scaled by the same factor).

  Returns:
    ``(init_fn, apply_fn, kernel_fn)`` of ``neural_tangents.stax.serial``.
  """
  if int(width) < 1 or int(depth) < 1 or int(out_dim) < 1:
    raise ValueError(f"width, depth, out_dim must be >= 1, got {width}, {depth}, {out_dim}")
  if m is None:
    act = _sg_stax.SurrogateSign(surrogate, **surrogate_params)
  else:
    act = _sg_stax.SurrogateErf(m, surrogate, **surrogate_params)
  layers = []
  for _ in range(int(depth)):
    layers += [nt.stax.Dense(int(width), W_std=w_std, b_std=b_std), act]
  scale = 1.0 if out_std is None else out_std / w_std
  layers.append(nt.stax.Dense(int(out_dim), W_std=w_std * scale, b_std=b_std * scale))
  init_fn, apply_fn, kernel_fn = nt.stax.serial(*layers)
  return init_fn, apply_fn, checked_kernel_fn(kernel_fn)


def checked_kernel_fn(kernel_fn):
  """Wraps an NT ``kernel_fn`` so that inputs with different feature shapes raise ``ValueError``.

  (NT itself fails deep inside ``Dense`` with a ``TypeError`` about ``dot_general``.)
  """

  @functools.wraps(kernel_fn)
  def wrapped(x1, x2=None, get=None, **kwargs):
    if x2 is not None and hasattr(x1, "shape") and hasattr(x2, "shape"):
      if tuple(x1.shape[1:]) != tuple(x2.shape[1:]):
        raise ValueError(
          f"x1 and x2 must have the same feature shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
        )
    return kernel_fn(x1, x2, get, **kwargs)

  return wrapped
