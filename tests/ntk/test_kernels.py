"""SG-NTK dual kernels and layers: closed forms vs quadrature / Monte Carlo, limits, symmetry."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from tolerances import assert_close, tol

import ntk
from ntk._src import kernels as K
from ntk._src import surrogates as S

nt = ntk.nt  # neural_tangents, imported by ntk under the compatibility layer
stax = nt.stax

W, B = 1.0, 0.1


def enable_x64():
  """Scoped float64 references (``jax.experimental.enable_x64`` is ``jax.enable_x64`` now)."""
  return jax.enable_x64(True)


# (q1, q2, c) triples: off-diagonal, strongly correlated, different variances, diagonal.
QQC = np.array([[1.0, 1.3, 0.4], [0.8, 0.9, 0.82], [2.0, 0.5, -0.6], [1.1, 1.1, 1.1]])
SURR = [
  S.ErfSurrogate(1.0),
  S.ErfSurrogate(2.5),
  S.GaussianSurrogate(1.5, 0.7),
  S.TriangleSurrogate(0.8, 2.0),
  S.StraightThroughSurrogate(1.0),
  S.FastSigmoidSurrogate(3.0),
]


def _net(act, depth=2, width=64):
  layers = [stax.Dense(width, W, B), act] * depth + [stax.Dense(1, W, B)]
  init_fn, apply_fn, kernel_fn = stax.serial(*layers)
  # Jitted: one compilation instead of dozens of eager op compilations (slow on 2 shared cores).
  return init_fn, apply_fn, jax.jit(kernel_fn, static_argnums=2)


def _circle(angles):
  angles = np.asarray(angles)
  return np.stack([np.sin(angles), np.cos(angles)], 1)


# ---------------------------------------------------------------- closed forms vs quadrature / MC


@pytest.mark.parametrize("g", SURR, ids=lambda g: repr(g))
def test_smoothing_closed_form_matches_quadrature(g):
  """H_g(s2) = E[g(s xi)] against adaptive quadrature (split at g's kinks) in float64."""
  with enable_x64():
    for s2 in [0.05, 0.4, 1.0, 2.5]:
      s = math.sqrt(s2)
      f = lambda x, s=s: 2 * math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) * float(g.grad(s * x))
      kinks = [g.width / s] if isinstance(g, S.TriangleSurrogate) else None
      ref = scipy.integrate.quad(f, 0, 14, points=kinks, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
      if isinstance(g, S.TriangleSurrogate | S.FastSigmoidSurrogate):
        # Chebyshev-fit surrogates: their documented bound (see test_chebyshev_fit_error_bound).
        assert_close(g.smoothed(jnp.float64(s2)), ref, rtol=S.FIT_REL_ERR_BOUND, atol=0.0)
      else:
        assert_close(g.smoothed(jnp.float64(s2)), ref, dtype=jnp.float64)
      if hasattr(g, "smoothed_closed_form"):
        assert_close(g.smoothed_closed_form(jnp.float64(s2)), ref, dtype=jnp.float64)


@pytest.mark.parametrize("g", [s for s in SURR if s.gaussian is not None], ids=repr)
@pytest.mark.parametrize("m", [0.7, 1.5])
def test_erf_m_mixed_kernel_matches_2d_gauss_hermite(g, m):
  with enable_x64():
    q1, q2, c = (jnp.asarray(QQC[:3, i]) for i in range(3))
    got = K.sg_dot(c, q1, q2, g, K.erf_offset(m))
    true_grad = lambda u: (2 * m / math.sqrt(math.pi)) * jnp.exp(-((m * u) ** 2))
    ref = K.gauss_hermite_2d(true_grad, g.grad, c, q1, q2, deg=160)
    assert_close(got, ref, dtype=jnp.float64)
    # The closed form with the general (H_g) route agrees as well.
    a = K.erf_offset(m)
    general = 2 / jnp.sqrt(2 * math.pi * (q1 + a)) * g.smoothed(q2 - c**2 / (q1 + a))
    assert_close(got, general, dtype=jnp.float64)


@pytest.mark.parametrize("m", [None, 1.0])
def test_arcsine_nngp_matches_quadrature_and_monte_carlo(m):
  with enable_x64():
    q1, q2, c = (jnp.asarray(QQC[:3, i]) for i in range(3))
    a = K.erf_offset(m)
    got = K.arcsine_nngp(c, q1, q2, a)
    fn = jnp.sign if m is None else (lambda u: jax.scipy.special.erf(m * u))
    if m is not None:
      assert_close(got, K.gauss_hermite_2d(fn, fn, c, q1, q2, deg=160), dtype=jnp.float64)
    n = 200_000
    z = jax.random.normal(jax.random.PRNGKey(0), (2, n), jnp.float64)
    for i in range(3):
      u = jnp.sqrt(q1[i]) * z[0]
      v = c[i] / jnp.sqrt(q1[i]) * z[0] + jnp.sqrt(q2[i] - c[i] ** 2 / q1[i]) * z[1]
      prod = fn(u) * fn(v)
      # Monte Carlo tolerance: 5 standard errors of the sample mean (|prod| <= 1).
      se = float(jnp.std(prod)) / math.sqrt(n)
      assert abs(float(jnp.mean(prod)) - float(got[i])) < 5 * se


@pytest.mark.parametrize("g", SURR, ids=repr)
def test_sign_mixed_kernel_matches_monte_carlo(g):
  """E[2 delta(u) g(v)] = 2 p_u(0) E[g(v) | u = 0]; sample v | u = 0 ~ N(0, q2 - c^2 / q1)."""
  with enable_x64():
    n = 200_000
    xi = jax.random.normal(jax.random.PRNGKey(1), (n,), jnp.float64)
    for q1, q2, c in QQC[:3]:
      got = float(K.sg_dot(jnp.float64(c), q1, q2, g, 0.0))
      vals = 2 / math.sqrt(2 * math.pi * q1) * g.grad(math.sqrt(q2 - c * c / q1) * xi)
      # Monte Carlo tolerance: 5 standard errors of the sample mean.
      se = float(jnp.std(vals)) / math.sqrt(n)
      assert abs(float(jnp.mean(vals)) - got) < 5 * se + 1e-12


# ------------------------------------------------------------------------- layers vs recursion


@pytest.mark.parametrize("name", sorted(S.SURROGATES))
def test_layer_matches_direct_recursion_off_sphere(name):
  with enable_x64():
    rs = np.random.RandomState(0)
    x1, x2 = rs.randn(5, 3), 1.7 * rs.randn(4, 3)
    _, _, kernel_fn = _net(ntk.stax.SurrogateSign(name))
    k = kernel_fn(x1, x2, ("nngp", "ntk"))
    s, i = ntk.analytic_sg_ntk(x1, x2, depth=2, w_std=W, b_std=B, surrogate=name)
    assert k.ntk.dtype == jnp.float64
    assert_close(k.nngp, s)
    assert_close(k.ntk, i)


def test_layer_float32_matches_float64():
  rs = np.random.RandomState(0)
  x1, x2 = rs.randn(5, 3).astype(np.float32), rs.randn(4, 3).astype(np.float32)
  _, _, kernel_fn = _net(ntk.stax.SurrogateErf(3.0, "erf"))
  k = jax.jit(kernel_fn, static_argnums=2)(x1, x2, "ntk")
  with enable_x64():
    ref = ntk.analytic_sg_ntk(x1.astype(np.float64), x2.astype(np.float64), m=3.0)[1]
  r, _ = tol(np.float32)
  np.testing.assert_allclose(np.asarray(k, np.float64), ref, rtol=30 * r)  # 2 layers of roundoff


def test_general_surrogate_layer_matches_closed_form():
  """``Surrogate(erf(m .), ...)`` by quadrature equals ``SurrogateErf(m)`` in closed form."""
  with enable_x64():
    rs = np.random.RandomState(1)
    x1, x2 = rs.randn(3, 2), rs.randn(2, 2)
    m = 0.5  # quadrature converges fast for wide erf_m / erf_beta (deg 70: ~1e-12)
    fn = lambda x: jax.scipy.special.erf(m * x)
    k_gen = _net(ntk.stax.Surrogate(fn, "erf", deg=70), depth=1)[2](x1, x2, ("nngp", "ntk"))
    k_cf = _net(ntk.stax.SurrogateErf(m, "erf"), depth=1)[2](x1, x2, ("nngp", "ntk"))
    assert_close(k_gen.nngp, k_cf.nngp)
    assert_close(k_gen.ntk, k_cf.ntk)


def test_paper_values_and_erf_m_to_sign_limit():
  """I_erf_m -> I_sign as m grows (spec 2.4 table: beta = 1, L = 2, unit circle)."""
  with enable_x64():
    x = _circle([0.0, 2 * np.pi / 7, np.pi / 2])
    _, i_sign = ntk.analytic_sg_ntk(x[:1], x, m=None)
    np.testing.assert_allclose(np.asarray(i_sign)[0], [2.4908, 0.7223, 0.0403], atol=1e-4)
    errs = []
    for m in [2.0, 5.0, 20.0, 100.0, 1000.0]:
      k = _net(ntk.stax.SurrogateErf(m))[2](x[:1], x, "ntk")
      errs.append(float(jnp.max(jnp.abs(k - i_sign))))
    assert all(a > b for a, b in zip(errs[1:], errs[2:])), errs
    assert errs[-1] < 1e-3 and errs[0] > 0.5
    np.testing.assert_allclose(
      np.asarray(_net(ntk.stax.SurrogateErf(2.0))[2](x[:1], x, "ntk"))[0],
      [1.7159, 0.8107, 0.0474],
      atol=1e-4,
    )


def test_naive_ntk_of_erf_m_diverges_on_the_diagonal():
  """stax.Erf(1, m, 0): Theta(x, x) grows like m^L (L = 2), Theta(x, x') stays finite."""
  with enable_x64():
    x = _circle([0.0, 2 * np.pi / 7])
    diag, off = [], []
    for m in [100.0, 1000.0, 10000.0]:
      k = _net(stax.Erf(1.0, m, 0.0))[2](x[:1], x, "ntk")
      diag.append(float(k[0, 0]))
      off.append(float(k[0, 1]))
    ratios = np.array(diag[1:]) / np.array(diag[:-1])
    np.testing.assert_allclose(np.log10(ratios), 2.0, atol=0.02)  # x10 in m -> x10^L, L = 2
    np.testing.assert_allclose(diag[0], 2957, rtol=1e-3)
    np.testing.assert_allclose(off, [0.9857, 0.9767, 0.9758], atol=1e-4)  # spec 2.3 table


def test_asymmetric_off_sphere_symmetric_on_sphere():
  with enable_x64():
    _, _, kernel_fn = _net(ntk.stax.SurrogateSign("erf"))
    rs = np.random.RandomState(2)
    x = rs.randn(6, 2) * rs.uniform(0.5, 2.0, (6, 1))
    k = kernel_fn(x, None, ("nngp", "ntk"))
    assert_close(k.nngp, k.nngp.T)
    assert float(jnp.max(jnp.abs(k.ntk - k.ntk.T))) > 0.05
    # Orientation: rows = x1 = true side.
    k12 = kernel_fn(x[:3], x[3:], "ntk")
    k21 = kernel_fn(x[3:], x[:3], "ntk")
    assert float(jnp.max(jnp.abs(k12 - k21.T))) > 0.05
    xs = _circle(rs.uniform(-np.pi, np.pi, 6))
    ks = kernel_fn(xs, None, "ntk")
    assert_close(ks, ks.T)


# ---------------------------------------------------------------------------------- bad input


def test_unknown_surrogate():
  with pytest.raises(ValueError, match="unknown surrogate 'sigmoidish'"):
    ntk.stax.SurrogateSign("sigmoidish")
  with pytest.raises(ValueError, match="no parameter"):
    ntk.get_surrogate("erf", width=1.0)


@pytest.mark.parametrize(
  "make",
  [
    lambda: ntk.stax.SurrogateSign("erf", beta=0.0),
    lambda: ntk.stax.SurrogateSign("gaussian", width=-1.0),
    lambda: ntk.stax.SurrogateSign("triangle", width=float("nan")),
    lambda: ntk.stax.SurrogateSign("fast_sigmoid", beta=-2.0),
    lambda: ntk.stax.SurrogateErf(0.0),
    lambda: ntk.stax.Surrogate(jnp.tanh, "erf", deg=0),
  ],
)
def test_non_positive_parameters(make):
  with pytest.raises(ValueError, match="positive|>= 1"):
    make()


def test_mismatched_feature_sizes():
  _, _, kernel_fn = ntk.sg_mlp(8)
  with pytest.raises(ValueError, match="same feature shape"):
    kernel_fn(np.ones((3, 2)), np.ones((4, 3)), "ntk")
  with pytest.raises(ValueError, match="equal d"):
    ntk.analytic_sg_ntk(np.ones((3, 2)), np.ones((4, 3)))


def test_activation_requires_gaussian_input():
  _, _, kernel_fn = stax.serial(stax.Dense(1), stax.Erf(), ntk.stax.SurrogateSign("erf"))
  with pytest.raises(ValueError, match="must be Gaussian"):
    kernel_fn(np.ones((3, 2)), None, "ntk")
