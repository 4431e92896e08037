"""The recoding step, the error signals and the step sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from tolerances import assert_close

import recoder
from recoder._src.recode import apply_step

SIGNALS = sorted(recoder.SIGNALS)


def _state(key, dtype=jnp.float32, L=2, B=3, H=5):
  rng = np.random.default_rng(jax.random.randint(key, (), 0, 1000).item())
  return {
    "h": jnp.asarray(rng.standard_normal((L, B, H)), dtype),
    "c": jnp.asarray(rng.standard_normal((L, B, H)), dtype),
  }


def _error(s):
  # A coupled, non-quadratic error per example (B,).
  top = jnp.tanh(s["c"][1]) * s["h"][0] + s["h"][1]
  return jnp.sum(jnp.log1p(top**2), -1) + jnp.sum(jnp.sin(s["c"][0]), -1)


def test_recode_matches_independent_gradient_float64():
  with jax.enable_x64(True):
    s = _state(jax.random.key(0), jnp.float64)
    g = jax.jit(jax.grad(lambda t: jnp.sum(_error(t))))(s)
    eta = 0.37
    got = jax.jit(lambda s: recoder.recode(s, _error, eta))(s)
    for k in ("h", "c"):
      assert got[k].dtype == jnp.float64
      assert_close(got[k], s[k] - eta * g[k])


def test_recode_float32_matches_float64_reference():
  s32 = _state(jax.random.key(1))
  rec = jax.jit(lambda s: recoder.recode(s, _error, 0.5))
  got = rec(s32)
  with jax.enable_x64(True):
    s64 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), s32)
    ref = rec(s64)
  for k in ("h", "c"):
    assert got[k].dtype == jnp.float32
    assert_close(got[k], ref[k], dtype=jnp.float32)


def test_step_size_zero_is_identity_exactly():
  s = _state(jax.random.key(2))
  got = jax.jit(lambda s, eta: recoder.recode(s, _error, eta))(s, 0.0)
  for k in ("h", "c"):
    np.testing.assert_array_equal(got[k], s[k])


def test_per_layer_step_size_tree():
  s = _state(jax.random.key(3))
  eta = {"h": jnp.array([0.0, 1.0])[:, None, None], "c": jnp.array([2.0, 0.0])[:, None, None]}
  g = jax.jit(jax.grad(lambda t: jnp.sum(_error(t))))(s)
  got = jax.jit(lambda s, eta: recoder.recode(s, _error, eta))(s, eta)
  assert_close(got["h"][0], s["h"][0])
  assert_close(got["h"][1], s["h"][1] - g["h"][1])
  assert_close(got["c"][0], s["c"][0] - 2.0 * g["c"][0])


def test_first_order_step_lowers_the_error():
  s = _state(jax.random.key(4))
  f = jax.jit(lambda s: (jnp.sum(_error(s)), jnp.sum(_error(recoder.recode(s, _error, 1e-3)))))
  before, after = f(s)
  assert after < before


def test_non_finite_gradients_become_zero():
  s = {"h": jnp.array([0.0, 4.0]), "c": jnp.array([1.0, 1.0])}
  got = recoder.recode(s, lambda t: jnp.sqrt(t["h"]) + t["c"], 0.1)  # d sqrt(0) = inf
  np.testing.assert_array_equal(got["h"], jnp.array([0.0, 4.0 - 0.1 * 0.25]))
  assert np.all(np.isfinite(got["c"]))


def test_first_order_treats_gradient_as_constant_second_order_does_not():
  s = {"h": jnp.array([0.3, -0.2]), "c": jnp.array([0.1, 0.4])}
  err = lambda t: jnp.sum(t["h"] ** 3 + t["c"] ** 2)

  def loss(x, second):
    return jnp.sum(recoder.recode(x, err, 0.1, second_order=second)["h"])

  g1 = jax.jit(jax.grad(loss), static_argnums=1)(s, False)
  g2 = jax.jit(jax.grad(loss), static_argnums=1)(s, True)
  np.testing.assert_array_equal(g1["h"], jnp.ones(2))  # identity path only
  assert_close(g2["h"], 1.0 - 0.1 * 6 * s["h"])


def test_negative_step_size_raises():
  s = _state(jax.random.key(5))
  with pytest.raises(ValueError, match="non-negative"):
    recoder.recode(s, _error, -0.1)
  with pytest.raises(ValueError, match="non-negative"):
    recoder.recode(s, _error, {"h": 0.1, "c": -1.0})


def test_unknown_signal_raises():
  with pytest.raises(ValueError, match="unknown error signal 'nope'"):
    recoder.RecodingConfig(signal="nope")
  with pytest.raises(ValueError, match="unknown step_type"):
    recoder.RecodingConfig(signal="surprisal", step_type="adam")


def test_gold_surprisal_redecode_is_refused():
  with pytest.raises(ValueError, match="leak"):
    recoder.RecodingConfig(signal="surprisal", redecode=True)


# --- Signals ----------------------------------------------------------------------------------


def _decoder(key, H=6, V=7, K=3, dtype=jnp.float32):
  rng = np.random.default_rng(jax.random.randint(key, (), 0, 1000).item())
  W = jnp.asarray(rng.standard_normal((K, H, V)), dtype)
  b = jnp.asarray(rng.standard_normal((K, V)), dtype)
  members = lambda h: jnp.einsum("bh,khv->kbv", h, W) + b[:, None]
  return (lambda h: jnp.mean(members(h), 0)), members


@pytest.mark.parametrize("name", SIGNALS)
def test_signal_gradients_check_grads(name):
  with jax.enable_x64(True):
    dec, mem = _decoder(jax.random.key(6), dtype=jnp.float64)
    h = jnp.asarray(np.random.default_rng(7).standard_normal((4, 6)))
    y = jnp.array([0, 3, 6, 2])
    cfg = recoder.RecodingConfig(signal=name, num_samples=3, mc_dropout=0.3)
    sig = recoder.get_signal(name)
    f = jax.jit(
      lambda h: sig.fn(h, decode=dec, decode_members=mem, target=y, key=jax.random.key(8), cfg=cfg)[
        0
      ]
    )
    assert f(h).shape == (4,)
    assert np.all(np.isfinite(f(h)))
    check_grads(f, (h,), order=1, modes=("rev",), eps=1e-6)


def test_surprisal_values():
  dec, mem = _decoder(jax.random.key(9))
  h = jax.random.normal(jax.random.key(10), (2, 6))
  y = jnp.array([1, 4])
  cfg = recoder.RecodingConfig(signal="surprisal")
  kw = dict(decode=dec, decode_members=mem, target=y, key=None, cfg=cfg)

  @jax.jit
  def f(h):
    p = jnp.exp(jax.nn.log_softmax(dec(h))[jnp.arange(2), y])
    return (
      p,
      recoder.get_signal("surprisal").fn(h, **kw)[0],
      recoder.get_signal("ptok_ppl").fn(h, **kw)[0],
    )

  p, sur, ptok = f(h)
  assert_close(sur, -np.log(p))
  assert_close(ptok, p ** (-p) - 1)


def test_ensemble_entropy_is_per_example_and_batch_invariant():
  # The author's code averaged over the batch axis; ours averages over members.
  dec, mem = _decoder(jax.random.key(11))
  h = jax.random.normal(jax.random.key(12), (5, 6))
  cfg = recoder.RecodingConfig(signal="ensemble_entropy")
  f = jax.jit(
    lambda h: recoder.get_signal("ensemble_entropy").fn(
      h, decode=dec, decode_members=mem, target=None, key=None, cfg=cfg
    )[0]
  )
  full = f(h)
  assert_close(f(h[2:3]), full[2:3])
  p = np.asarray(jax.jit(lambda h: jnp.mean(jax.nn.softmax(mem(h), -1), 0)[0])(h[:1]))
  assert_close(full[0], -np.sum(p * np.log(p)))


def test_mc_dropout_deterministic_under_fixed_key():
  dec, mem = _decoder(jax.random.key(13))
  h = jax.random.normal(jax.random.key(14), (3, 6))
  for name in ("mc_entropy", "mc_variance"):
    cfg = recoder.RecodingConfig(signal=name, num_samples=4, mc_dropout=0.5)
    f = jax.jit(
      lambda k, name=name, cfg=cfg: recoder.get_signal(name).fn(
        h, decode=dec, decode_members=mem, target=None, key=k, cfg=cfg
      )[0]
    )
    np.testing.assert_array_equal(f(jax.random.key(1)), f(jax.random.key(1)))
    assert not np.allclose(f(jax.random.key(1)), f(jax.random.key(2)))


def test_step_size_predictors():
  cfg_l = recoder.RecodingConfig(signal="entropy", step_type="learned")
  p = jax.jit(lambda k: recoder.init_step_params(k, cfg_l, 2, 5))(jax.random.key(0))
  nodes = _state(jax.random.key(1))
  eta = jax.jit(lambda p, n: recoder.step_sizes(cfg_l, p, None, n))(p, nodes)
  assert_close(eta["h"][:, 0, 0], jax.nn.softplus(p["h"]))
  cfg_m = recoder.RecodingConfig(signal="entropy", step_type="mlp", mlp_hidden=(4, 3))
  p = jax.jit(lambda k: recoder.init_step_params(k, cfg_m, 2, 5))(jax.random.key(0))
  eta = jax.jit(lambda p, n: recoder.step_sizes(cfg_m, p, None, n))(p, nodes)
  assert eta["h"].shape == (2, 3, 1) and np.all(np.asarray(eta["c"]) > 0)
  # The MLP sees a detached state: no gradient flows from eta into the state.
  g = jax.jit(jax.grad(lambda n: jnp.sum(recoder.step_sizes(cfg_m, p, None, n)["h"])))(nodes)
  np.testing.assert_array_equal(g["h"], 0.0)


def test_apply_step_keeps_dtype():
  s = _state(jax.random.key(3), jnp.bfloat16)
  out = jax.jit(lambda s: apply_step(s, s, 0.5))(s)
  assert out["h"].dtype == jnp.bfloat16
