"""Finite SGL networks, the empirical SG-NTK, and the non-symmetric GP predictor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from tolerances import assert_close, tol

import ntk

nt = ntk.nt
stax = nt.stax


def enable_x64():
  """Scoped float64 references (``jax.experimental.enable_x64`` is ``jax.enable_x64`` now)."""
  return jax.enable_x64(True)


def _inputs():
  rs = np.random.RandomState(0)
  x1 = rs.randn(5, 3) * rs.uniform(0.6, 1.6, (5, 1))
  x2 = rs.randn(4, 3) * 1.3
  return x1.astype(np.float32), x2.astype(np.float32)


def test_surrogate_backward_pass():
  _, apply_fn, _ = ntk.stax.SurrogateSign("erf", beta=2.0)
  x = jnp.linspace(-1.0, 1.0, 5)
  assert_close(apply_fn((), x), jnp.sign(x))
  g = jax.vmap(jax.grad(lambda v: apply_fn((), v)))(x)
  assert_close(g, ntk.get_surrogate("erf", beta=2.0).grad(x))
  g0 = jax.vmap(jax.grad(lambda v: apply_fn((), v, surrogate_weight=0.0)))(x)
  assert_close(g0, jnp.zeros_like(x))
  _, apply_m, _ = ntk.stax.SurrogateErf(2.0, "triangle")
  gm = jax.vmap(jax.grad(lambda v: apply_m((), v, surrogate_weight=0.0)))(x)
  assert_close(gm, jax.vmap(jax.grad(lambda v: jax.scipy.special.erf(2.0 * v)))(x))


def test_empirical_sg_ntk_is_j_times_surrogate_j():
  x1, x2 = _inputs()
  init_fn, apply_fn, _ = ntk.sg_mlp(16, m=2.0, surrogate="erf")
  _, params = init_fn(jax.random.PRNGKey(0), x1.shape)

  @jax.jit
  def reference(params, x1, x2):
    flat = lambda j: jnp.concatenate(
      [leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree_util.tree_leaves(j)], 1
    )
    j1 = flat(jax.jacobian(lambda p: apply_fn(p, x1, surrogate_weight=0.0)[:, 0])(params))
    j2 = flat(jax.jacobian(lambda p: apply_fn(p, x2, surrogate_weight=1.0)[:, 0])(params))
    return j1 @ j2.T

  ref = reference(params, x1, x2)
  r, _ = tol(ref.dtype)
  # 1 Jacobian contraction, 2 NTK-vector products, 3 structured derivatives, 0 AUTO.
  for implementation in (1, 2, 3, 0):
    got = jax.jit(ntk.empirical_sg_ntk_fn(apply_fn, implementation=implementation))(x1, x2, params)
    np.testing.assert_allclose(got, ref, rtol=10 * r, atol=10 * r * float(jnp.max(jnp.abs(ref))))
  with pytest.raises(ValueError, match="implementation"):
    ntk.empirical_sg_ntk_fn(apply_fn, implementation=4)
  with pytest.raises(ValueError, match="feature shape"):
    ntk.empirical_sg_ntk_fn(apply_fn)(x1, x2[:, :2], params)
  _, _, kernel_fn = ntk.sg_mlp(4)
  with pytest.raises(ValueError, match="feature shape"):
    kernel_fn(x1, x2[:, :2], "ntk")


def test_empirical_sg_ntk_converges_like_one_over_width():
  """MSE(empirical, analytic) ~ 1/width: fitted log-log slope in [-1.5, -0.6]."""
  x1, x2 = _inputs()
  _, _, kernel_fn = ntk.sg_mlp(1, m=2.0)
  analytic = np.asarray(kernel_fn(x1, x2, "ntk"))
  widths, seeds = [64, 256, 1024], 4
  mse = []
  for width in widths:
    init_fn, apply_fn, _ = ntk.sg_mlp(width, m=2.0)
    emp_fn = jax.jit(ntk.empirical_sg_ntk_fn(apply_fn))
    errs = []
    for seed in range(seeds):
      _, params = init_fn(jax.random.PRNGKey(seed), x1.shape)
      errs.append(np.mean((np.asarray(emp_fn(x1, x2, params)) - analytic) ** 2))
    mse.append(np.mean(errs))
  slope = np.polyfit(np.log(widths), np.log(mse), 1)[0]
  print(f"MSE {mse}, slope {slope:.2f}")
  assert -1.5 < slope < -0.6, (mse, slope)


def _circle(a):
  return np.stack([np.sin(a), np.cos(a)], 1)


def test_predict_matches_neural_tangents_on_the_sphere():
  """On S^1 the SG-NTK is symmetric; then our LU/expm predictor equals NT's eigh/Cholesky one."""
  with enable_x64():
    a = np.linspace(-np.pi, np.pi, 12, endpoint=False)
    x, y = _circle(a), np.cos(3 * a) + 0.5 * np.sin(a)
    idx = np.arange(0, 12, 2)
    _, _, kernel_fn = ntk.sg_mlp(1)
    ours = ntk.predict.gradient_descent_mse_sg_ensemble(
      kernel_fn, x[idx], y[idx], learning_rate=0.1
    )
    theirs = nt.predict.gradient_descent_mse_ensemble(
      kernel_fn, x[idx], y[idx, None], learning_rate=0.1
    )
    for t in (30.0,):  # t = None is checked against the closed form in the next test
      m1, c1 = ours(t, x)
      m2, c2 = theirs(t, x, "ntk", compute_cov=True)
      assert_close(m1, m2[:, 0], rtol=1e-8, atol=1e-8)  # eigh vs expm/LU routes, float64
      assert_close(c1, c2, rtol=1e-8, atol=1e-8)


def test_predict_non_symmetric_matches_ode():
  """Off the sphere I(X, X) is not symmetric; the mean follows the gradient-flow ODE."""
  with enable_x64():
    rs = np.random.RandomState(3)
    x = rs.randn(7, 2) * rs.uniform(0.5, 2.0, (7, 1))
    y = np.sin(x[:, 0]) + x[:, 1]
    xt = rs.randn(3, 2)
    _, _, kernel_fn = ntk.sg_mlp(1)
    kernel_fn = jax.jit(kernel_fn, static_argnums=2)
    kxx = np.asarray(kernel_fn(x, x, "ntk"))
    ktx = np.asarray(kernel_fn(xt, x, "ntk"))
    assert np.max(np.abs(kxx - kxx.T)) > 1e-2
    lr, t_end, n = 0.5, 40.0, len(y)

    def rhs(_, f):  # mean dynamics, f = (f(X), f(x_test)), f_0 = 0
      r = f[:n] - y
      return -lr / n * np.concatenate([kxx @ r, ktx @ r])

    sol = scipy.integrate.solve_ivp(rhs, (0, t_end), np.zeros(n + 3), rtol=1e-12, atol=1e-12)
    predict_fn = ntk.predict.gradient_descent_mse_sg_ensemble(kernel_fn, x, y, learning_rate=lr)
    assert_close(predict_fn(t_end, x, compute_cov=False), sol.y[:n, -1], rtol=1e-8, atol=1e-8)
    assert_close(predict_fn(t_end, xt, compute_cov=False), sol.y[n:, -1], rtol=1e-8, atol=1e-8)
    # Converged: interpolates the training data; t=None equals a very late time.
    assert_close(predict_fn(None, x, compute_cov=False), y, rtol=1e-8, atol=1e-8)
    m_inf, cov_inf = predict_fn(None, xt)
    assert_close(m_inf, ktx @ np.linalg.solve(kxx, y), rtol=1e-8, atol=1e-8)
    assert cov_inf.shape == (3, 3) and np.all(np.diag(cov_inf) > 0)
    # The train outputs' covariance vanishes at t = infinity (f_inf(X) = Y exactly).
    _, cov_train = predict_fn(None, None)
    assert float(jnp.max(jnp.abs(cov_train))) < 1e-8


def test_predict_float32_runs():
  x, _ = _inputs()
  y = np.sin(x[:, 0])
  _, _, kernel_fn = ntk.sg_mlp(1)
  mean, cov = ntk.predict.gradient_descent_mse_sg_ensemble(kernel_fn, x, y)(10.0, x[:2])
  assert mean.shape == (2,) and cov.shape == (2, 2)
  assert np.all(np.isfinite(np.asarray(cov)))


def test_predict_rejects_non_convergent_kernel():
  bad = np.array([[1.0, 0.0], [0.0, -0.5]])
  with pytest.raises(ValueError, match="non-positive real part"):
    ntk.predict.check_convergent(bad)
  rot = np.array([[0.0, 1.0], [-1.0, 0.0]])  # eigenvalues +-i: no decay
  with pytest.raises(ValueError, match="non-positive real part"):
    ntk.predict.check_convergent(rot)
  with pytest.raises(ValueError, match="square"):
    ntk.predict.check_convergent(np.ones((2, 3)))
  ev = ntk.predict.check_convergent(np.array([[2.0, 1.5], [-1.0, 1.0]]))  # non-symmetric, fine
  assert np.all(ev.real > 0)


def test_predict_shape_errors():
  x, _ = _inputs()
  _, _, kernel_fn = ntk.sg_mlp(1)
  with pytest.raises(ValueError, match="differ in length"):
    ntk.predict.gradient_descent_mse_sg_ensemble(kernel_fn, x, np.ones(3))
  predict_fn = ntk.predict.gradient_descent_mse_sg_ensemble(kernel_fn, x, np.ones(5))
  with pytest.raises(ValueError, match="feature shapes"):
    predict_fn(None, np.ones((2, 4)))


def test_gp_moments_does_not_recompile():
  from helpers import assert_no_compile

  def args(seed):
    r = np.random.RandomState(seed)
    a = r.randn(4, 4).astype(np.float32)
    kxx = a @ a.T + 4 * np.eye(4, dtype=np.float32) + 0.1 * r.randn(4, 4).astype(np.float32)
    return (
      r.randn(3, 4).astype(np.float32),
      kxx,
      r.randn(3, 4).astype(np.float32),
      np.eye(4, dtype=np.float32),
      np.eye(3, dtype=np.float32),
      r.randn(4).astype(np.float32),
    )

  jax.block_until_ready(ntk.predict.gp_moments(*args(0), tau=jnp.float32(1.0)))
  with assert_no_compile():
    jax.block_until_ready(ntk.predict.gp_moments(*args(1), tau=jnp.float32(2.5)))
