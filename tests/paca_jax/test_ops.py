"""partial_matmul: value, gradients, residuals, symbolic-zero w cotangent, input validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from jax.test_util import check_grads
from tolerances import assert_close

from paca_jax import partial_matmul

IDX = (1, 4, 6)


def _data(dtype=np.float32):
  k = jax.random.split(jax.random.key(0), 3)
  x = np.asarray(jax.random.normal(k[0], (2, 3, 8)), dtype)
  w = np.asarray(jax.random.normal(k[1], (8, 5)), dtype)
  p = np.asarray(jax.random.normal(k[2], (3, 5)), dtype)
  return x, w, p


def _ref(x, w, p):
  return x @ jnp.asarray(w).at[jnp.array(IDX)].set(p)


def test_value_matches_reference():
  x, w, p = _data()
  assert_close(partial_matmul(x, w, p, IDX), _ref(x, w, p))
  w2 = np.array(w)
  w2[list(IDX)] = p
  assert_close(partial_matmul(x, w2, p, IDX, merged=True), _ref(x, w, p))


def test_gradients_match_autodiff_float64():
  with jax.enable_x64(True):
    x, w, p = _data(np.float64)
    f = lambda x, p: partial_matmul(x, w, p, IDX)
    check_grads(f, (x, p), order=1, modes=["rev"])
    loss = lambda f: lambda x, p: jnp.sum(jnp.sin(f(x, p)))
    got = jax.grad(loss(f), argnums=(0, 1))(x, p)
    want = jax.grad(loss(lambda x, p: _ref(x, w, p)), argnums=(0, 1))(x, p)
    for g, r in zip(got, want):
      assert_close(g, r, dtype=np.float64)
    # merged form: same gradients when w already holds the rows.
    w2 = np.array(w)
    w2[list(IDX)] = p
    got_m = jax.grad(loss(lambda x, p: partial_matmul(x, w2, p, IDX, merged=True)), (0, 1))(x, p)
    for g, r in zip(got_m, want):
      assert_close(g, r, dtype=np.float64)


@pytest.mark.parametrize("merged", [False, True])
def test_saved_residuals_are_x_sel_not_x(merged, capsys):
  x, w, p = _data()
  # jax 0.10 exposes only the printing form publicly (jax.ad_checkpoint.print_saved_residuals).
  print_saved_residuals(lambda x, p: partial_matmul(x, w, p, IDX, merged=merged), x, p)
  out = capsys.readouterr().out
  assert "f32[2,3,3]" in out, out  # x[..., idx]
  assert "f32[2,3,8]" not in out, out  # never the full x


def test_no_w_shaped_cotangent_in_gradient_jaxpr():
  x, w, p = _data()
  f = lambda x, p: jnp.sum(partial_matmul(x, w, p, IDX) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, p)
  bad = {w.shape, w.shape[::-1]}
  for eqn in jaxpr.jaxpr.eqns:
    for v in eqn.outvars:
      assert tuple(v.aval.shape) not in bad, f"w-shaped intermediate from {eqn.primitive}"


def test_bad_indices_raise():
  x, w, p = _data()
  with pytest.raises(ValueError, match="duplicate"):
    partial_matmul(x, w, p, (1, 1, 2))
  with pytest.raises(ValueError, match="larger than the input width"):
    partial_matmul(x, w, np.zeros((9, 5), np.float32), tuple(range(9)))
  with pytest.raises(ValueError, match=r"\[0, 8\)"):
    partial_matmul(x, w, p, (1, 2, 8))
  with pytest.raises(ValueError, match="p must have shape"):
    partial_matmul(x, w, p[:2], IDX)
