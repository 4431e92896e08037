"""Gaussian process of surrogate gradient learning (SGL) in the infinite-width limit.

Paper: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers,
Memmesheimer, Goedeke, NeurIPS 2024). Under gradient flow on L = (1 / 2N) sum_i |f(x_i) - y_i|^2
with learning rate eta, an infinitely wide network trained with surrogate gradients evolves as
(tau = eta t / N, I the SG-NTK, Sigma the NNGP of the true activation, f_0 ~ GP(0, Sigma)):

  f_t(x) = f_0(x) - B_t(x) (f_0(X) - Y),  B_t(x) = I(x, X) I(X, X)^-1 (Id - exp(-tau I(X, X))),

so f_t is a GP with mean B_t(x) Y and covariance
Sigma(x, x') - B_t(x) Sigma(X, x') - Sigma(x, X) B_t(x')^T + B_t(x) Sigma(X, X) B_t(x')^T; at
t = infinity B = I(x, X) I(X, X)^-1. I(X, X) is in general neither symmetric nor PSD, so nothing
here uses Cholesky or eigh (unlike ``neural_tangents.predict``): LU solves and
``jax.scipy.linalg.expm``. The flow converges only if every eigenvalue of I(X, X) has positive
real part; this is checked (``ValueError`` otherwise).

Usage::

  import ntk
  predict_fn = ntk.predict.gradient_descent_mse_sg_ensemble(kernel_fn, x_train, y_train)
  mean, cov = predict_fn(t=None, x_test=x_test)           # t=None: converged
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax import numpy as jnp
from jax.scipy.linalg import expm

__all__ = ["check_convergent", "gp_moments", "gradient_descent_mse_sg_ensemble"]


def check_convergent(k_train_train, *, rtol: float = 1e-6) -> np.ndarray:
  """Raises ``ValueError`` unless all eigenvalues of I(X, X) have positive real part.

  Args:
    k_train_train: (N, N) SG-NTK on the training inputs (any real square matrix).
    rtol: eigenvalues with real part <= rtol * max |eigenvalue| count as non-positive.

  Returns:
    The eigenvalues (NumPy, complex), for diagnostics.
  """
  k = np.asarray(k_train_train, dtype=np.float64)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f"the train-train kernel must be a square matrix, got shape {k.shape}")
  if not np.all(np.isfinite(k)):
    raise ValueError("the train-train kernel has non-finite entries")
  ev = np.linalg.eigvals(k)
  scale = max(float(np.max(np.abs(ev))), np.finfo(np.float64).tiny)
  worst = float(np.min(ev.real))
  if worst <= rtol * scale:
    raise ValueError(
      "surrogate-gradient dynamics do not converge: the SG-NTK I(X, X) has an eigenvalue with "
      f"non-positive real part (min Re = {worst:.3e}, max |lambda| = {scale:.3e}); the kernel "
      "regression mean I(x, X) I(X, X)^-1 Y is not the limit of training."
    )
  return ev


def _b_matrix(k_tx, k_xx, tau):
  """B_tau = I(x, X) I(X, X)^-1 (Id - exp(-tau I(X, X))) (tau=None: infinity), shape (M, N)."""
  n = k_xx.shape[0]
  # Solve from the right: B = (I_XX^-T k_tx^T)^T, with the finite-time factor applied after.
  a = jnp.linalg.solve(k_xx.T, k_tx.T).T  # I(x, X) I(X, X)^-1
  if tau is None:
    return a
  return a @ (jnp.eye(n, dtype=k_xx.dtype) - expm(-tau * k_xx))


@functools.partial(jax.jit, static_argnames=("compute_cov",))
def gp_moments(
  k_test_train,
  k_train_train,
  nngp_test_train,
  nngp_train_train,
  nngp_test_test,
  y_train,
  *,
  tau=None,
  compute_cov: bool = True,
):
  """Mean and covariance of the SGL Gaussian process at scaled time ``tau`` (None: infinity).

  Args:
    k_test_train: (M, N) SG-NTK I(x_test, X) (test = true side, train = surrogate side).
    k_train_train: (N, N) SG-NTK I(X, X).
    nngp_test_train: (M, N) Sigma(x_test, X).
    nngp_train_train: (N, N) Sigma(X, X).
    nngp_test_test: (M, M) Sigma(x_test, x_test) (or (M,) diagonal; then the returned
      covariance is the (M,) variance).
    y_train: (N,) or (N, K) targets.
    tau: eta t / N, or None for t = infinity.
    compute_cov: also return the covariance.

  Returns:
    ``mean`` (M[, K]) and, if ``compute_cov``, ``cov`` (M, M) or (M,).
  """
  k_tx = jnp.asarray(k_test_train)
  k_xx = jnp.asarray(k_train_train)
  y = jnp.asarray(y_train)
  n = k_xx.shape[0]
  if k_xx.shape != (n, n) or k_tx.ndim != 2 or k_tx.shape[1] != n or y.shape[0] != n:
    raise ValueError(
      f"shape mismatch: I(x, X) {k_tx.shape}, I(X, X) {k_xx.shape}, y_train {y.shape}"
    )
  b = _b_matrix(k_tx, k_xx, tau)
  mean = b @ y
  if not compute_cov:
    return mean
  s_tx = jnp.asarray(nngp_test_train)
  s_xx = jnp.asarray(nngp_train_train)
  s_tt = jnp.asarray(nngp_test_test)
  if s_tt.ndim == 1:
    cov = s_tt - 2 * jnp.sum(b * s_tx, -1) + jnp.sum((b @ s_xx) * b, -1)
  else:
    cov = s_tt - b @ s_tx.T - s_tx @ b.T + b @ s_xx @ b.T
  return mean, cov


def gradient_descent_mse_sg_ensemble(
  kernel_fn,
  x_train,
  y_train,
  *,
  learning_rate: float = 1.0,
  check: bool = True,
  **kernel_fn_kwargs,
):
  """Predictor of an infinite ensemble of SGL-trained networks (cf. NT's ``..._mse_ensemble``).

  Args:
    kernel_fn: an NT ``kernel_fn`` whose ``"ntk"`` is the SG-NTK (``ntk.stax`` layers).
    x_train: (N, d) training inputs.
    y_train: (N,) or (N, K) targets.
    learning_rate: eta; time is normalised by ``y_train.shape[0]`` as for ½-mean squared error
      (NT normalises by ``y_train.size``; for scalar outputs these agree).
    check: verify that the eigenvalues of I(X, X) have positive real part (eager; ``ValueError``).
    **kernel_fn_kwargs: passed to ``kernel_fn`` (which is jitted; these are closed over).

  Returns:
    ``predict_fn(t=None, x_test=None, compute_cov=True)`` -> ``mean`` or ``(mean, cov)``;
    ``t`` is the number of gradient-flow time units (steps for small eta), ``None`` for infinity;
    ``x_test=None`` predicts on the training inputs.
  """
  x_train = jnp.asarray(x_train)
  y_train = jnp.asarray(y_train)
  if x_train.shape[0] != y_train.shape[0]:
    raise ValueError(f"x_train {x_train.shape} and y_train {y_train.shape} differ in length")
  kernel_both = jax.jit(lambda a, b: kernel_fn(a, b, ("nngp", "ntk"), **kernel_fn_kwargs))
  nngp_self = jax.jit(lambda a: kernel_fn(a, None, "nngp", **kernel_fn_kwargs))
  k_train = kernel_both(x_train, x_train)
  if check:
    check_convergent(k_train.ntk)
  n = y_train.shape[0]

  def predict_fn(t=None, x_test=None, compute_cov: bool = True):
    tau = None if t is None else learning_rate * jnp.asarray(t) / n
    if x_test is None:
      k_tx = k_train
      s_tt = k_train.nngp
    else:
      x_test = jnp.asarray(x_test)
      if x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(
          f"x_test {x_test.shape} and x_train {x_train.shape} have different feature shapes"
        )
      k_tx = kernel_both(x_test, x_train)
      s_tt = nngp_self(x_test) if compute_cov else None
    return gp_moments(
      k_tx.ntk,
      k_train.ntk,
      k_tx.nngp,
      k_train.nngp,
      s_tt,
      y_train,
      tau=tau,
      compute_cov=compute_cov,
    )

  return predict_fn
