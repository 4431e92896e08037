"""The PaCA partial-connection matmul (Woo et al., "PaCA: Partial Connection Adaptation for
Efficient Fine-Tuning", ICLR 2025) as a ``jax.custom_vjp``.

A Flax kernel ``w`` is laid out ``(in, out)`` and ``y = x @ w``. PaCA trains ``r`` input channels,
i.e. the rows ``w[idx]`` (PyTorch's columns ``W[:, idx]``). The op computes ``y = x @ w'`` where
``w' = w.at[idx].set(p)`` and saves for the backward pass only ``x[..., idx]``:

  dx = dy @ w'^T     (the same GEMM a frozen layer needs)
  dp = x[..., idx]^T dy   (an ``(r, out)`` GEMM, accumulated in float32)

and no gradient for ``w``.

Usage::

  y = partial_matmul(x, w, p, idx)                 # any w: y = x @ w.at[idx].set(p)
  y = partial_matmul(x, w, p, idx, merged=True)    # caller guarantees w[idx] == p already

How ``w`` gets no cotangent: ``w`` is an ordinary (non-``nondiff_argnums``) argument and the
backward rule returns ``None`` for it, which JAX treats as a *symbolic* zero. When the caller
differentiates only with respect to ``x`` and ``p`` (``jax.grad(f, argnums=...)`` or a train step
whose ``jax.value_and_grad`` only sees the trainable tree, with ``w`` in a separate frozen tree),
``w`` is never a JVP-perturbed value, so no ``(in, out)`` zero is ever instantiated; the tests check
the gradient jaxpr for any ``w``-shaped intermediate.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["partial_matmul", "validate_indices", "take_rows", "write_rows_into"]


def validate_indices(idx, in_features: int, *, where: str = "partial_matmul") -> np.ndarray:
  """Checks that ``idx`` is a 1-D, in-range, duplicate-free index set; returns it as int32.

  Only concrete indices are checked (tracers are passed through untouched).

  Raises:
    ValueError: on duplicates, out-of-range entries, or a rank larger than ``in_features``.
  """
  if isinstance(idx, jax.core.Tracer):
    return idx
  arr = np.asarray(idx)
  if arr.ndim != 1:
    raise ValueError(f"{where}: idx must be 1-D, got shape {arr.shape}")
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{where}: idx must be integers, got dtype {arr.dtype}")
  if arr.size > in_features:
    raise ValueError(f"{where}: rank {arr.size} is larger than the input width {in_features}")
  if arr.size and (arr.min() < 0 or arr.max() >= in_features):
    raise ValueError(
      f"{where}: indices must lie in [0, {in_features}), got min {arr.min()} max {arr.max()}"
    )
  uniq, counts = np.unique(arr, return_counts=True)
  if uniq.size != arr.size:
    raise ValueError(f"{where}: duplicate indices {uniq[counts > 1].tolist()}")
  return arr.astype(np.int32)


def _sorted(idx) -> bool:
  if isinstance(idx, jax.core.Tracer):
    return False
  a = np.asarray(idx)
  return bool(np.all(a[1:] > a[:-1]))


def _gather_flags(sorted_: bool) -> dict:
  # Default (fill / drop) out-of-bounds modes: the SPMD partitioner relies on them to mask the
  # gather/scatter locally on a sharded axis (promise_in_bounds gave wrong sharded results).
  return dict(indices_are_sorted=sorted_, unique_indices=True)


def take_rows(w: jax.Array, idx) -> jax.Array:
  """``w[idx]`` along axis 0 (in-bounds, unique indices promised after validation)."""
  return jnp.asarray(w).at[jnp.asarray(idx, jnp.int32)].get(**_gather_flags(_sorted(idx)))


def write_rows_into(w: jax.Array, idx, rows: jax.Array) -> jax.Array:
  """``w.at[idx].set(rows)`` with the scatter flags that let XLA update ``w`` in place."""
  w = jnp.asarray(w)
  return w.at[jnp.asarray(idx, jnp.int32)].set(rows.astype(w.dtype), **_gather_flags(_sorted(idx)))


def _take_features(x: jax.Array, idx, sorted_: bool) -> jax.Array:
  return x.at[..., idx].get(**_gather_flags(sorted_))


def _compute_dtype(x, w):
  return jnp.result_type(x.dtype, w.dtype)


def _primal(x, w, p, idx, merged, sorted_):
  cdt = _compute_dtype(x, w)
  y = jnp.matmul(x.astype(cdt), w.astype(cdt))
  if not merged:
    x_sel = _take_features(x, idx, sorted_).astype(cdt)
    w_sel = w.at[idx].get(**_gather_flags(sorted_))
    acc = jnp.result_type(p.dtype, w.dtype, jnp.float32)
    corr = (p.astype(acc) - w_sel.astype(acc)).astype(cdt)
    y = y + jnp.matmul(x_sel, corr)
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _pmm(x, w, p, idx, merged, sorted_):
  return _primal(x, w, p, idx, merged, sorted_)


def _pmm_fwd(x, w, p, idx, merged, sorted_):
  x_sel = _take_features(x, idx, sorted_)
  # Residuals: x_sel (the only activation) plus the inputs w, p, idx, which are alive anyway.
  return _primal(x, w, p, idx, merged, sorted_), (x_sel, w, p, idx)


def _pmm_bwd(merged, sorted_, res, dy):
  x_sel, w, p, idx = res
  cdt = _compute_dtype(x_sel, w)
  dy_c = dy.astype(cdt)
  # dx = dy @ w^T as one dot_general contracting w's out axis (no transposed copy of w).
  dx = jax.lax.dot_general(dy_c, w.astype(cdt), (((dy.ndim - 1,), (1,)), ((), ())))
  if not merged:
    w_sel = w.at[idx].get(**_gather_flags(sorted_))
    acc = jnp.result_type(p.dtype, w.dtype, jnp.float32)
    corr = (p.astype(acc) - w_sel.astype(acc)).astype(cdt)
    dx_sel = jax.lax.dot_general(dy_c, corr, (((dy.ndim - 1,), (1,)), ((), ())))
    dx = dx.at[..., idx].add(dx_sel, **_gather_flags(sorted_))
  acc = jnp.result_type(p.dtype, cdt, jnp.float32)
  dp = jnp.einsum("...r,...o->ro", x_sel.astype(cdt), dy_c, preferred_element_type=acc)
  return dx.astype(x_sel.dtype), None, dp.astype(p.dtype), None


_pmm.defvjp(_pmm_fwd, _pmm_bwd)


def partial_matmul(
  x: jax.Array,
  w: jax.Array,
  p: jax.Array,
  idx,
  *,
  merged: bool = False,
  indices_sorted: bool | None = None,
):
  """``x @ w.at[idx].set(p)`` whose backward saves only ``x[..., idx]``.

  Args:
    x: activations ``(..., in)``.
    w: a Flax kernel ``(in, out)``; it gets no gradient (see the module docstring).
    p: the trainable rows ``(r, out)``, typically float32.
    idx: ``r`` distinct input-channel indices (a tuple, numpy or jax int array). Concrete indices are
      validated (``ValueError`` on duplicates or out-of-range entries); sorted concrete indices let
      XLA use a faster gather/scatter.
    merged: if True the caller promises ``w[idx] == p`` already (PaCA's in-place write-back, done
      once per optimizer step), so the forward is the single GEMM ``x @ w`` and ``p`` is read only
      for its gradient. If False the forward adds the exact correction
      ``x[..., idx] @ (p - w[idx])``.
    indices_sorted: the caller promises sorted ``idx`` (for traced indices, e.g. one layer's slice
      of a scanned decoder's ``(L, r)`` plan indices); ``None``: checked on concrete indices.

  Returns:
    ``(..., out)`` in the promoted dtype of ``x`` and ``w``.
  """
  x, w, p = jnp.asarray(x), jnp.asarray(w), jnp.asarray(p)
  if w.ndim != 2:
    raise ValueError(f"partial_matmul: w must be 2-D (in, out), got shape {w.shape}")
  if x.shape[-1] != w.shape[0]:
    raise ValueError(f"partial_matmul: x has {x.shape[-1]} features but w has {w.shape[0]} rows")
  sorted_ = _sorted(idx) if indices_sorted is None else bool(indices_sorted)
  idx = validate_indices(idx, w.shape[0])
  r = idx.shape[0]
  if p.shape != (r, w.shape[1]):
    raise ValueError(f"partial_matmul: p must have shape {(r, w.shape[1])}, got {p.shape}")
  return _pmm(x, w, p, jnp.asarray(idx, jnp.int32), merged, sorted_)
