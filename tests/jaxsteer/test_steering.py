"""Steering invariants: norm preservation, alpha = 0, chosen layers only, KV cache, no recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compiles, tiny_llama_config
from tolerances import STEER_NORM_RTOL_F32

import jaxsteer
from jaxsteer.grains import CaptureInterceptor, SteeringVectors, hidden_last
from jaxsteer.models import init_random

CFG = tiny_llama_config()


@pytest.fixture(scope="module")
def lm():
  return init_random(CFG, seed=0)


def _vecs(seed=0, layers=(1,)):
  rng = np.random.default_rng(seed)
  return SteeringVectors(layers, rng.normal(size=(len(layers), 16)).astype(np.float32))


def _residuals(model, ids):
  """Every layer's residual output, captured by interception on the given (maybe steered) model."""
  import flax.linen as nn

  f, a = model.intercept
  from jaxsteer._src.models.lm import apply_intercepted

  with nn.intercept_methods(CaptureInterceptor(tuple(range(CFG.num_layers)))()):
    _, st = apply_intercepted(
      model.module, f, model.params, a, jnp.asarray(ids), mutable=["intermediates"]
    )
  return [np.asarray(st["intermediates"][f"layers_{i}"]["residual"][0]) for i in range(3)]


IDS = np.array([[1, 5, 9, 13, 17, 21, 3, 7]])


def test_norms_preserved_per_token(lm):
  base = _residuals(lm, IDS)
  steered = _residuals(jaxsteer.steer(lm, _vecs(), alpha=3.0), IDS)
  # Layer 1 is steered: every token keeps its norm but changes direction.
  n0 = np.linalg.norm(base[1], axis=-1)
  n1 = np.linalg.norm(steered[1], axis=-1)
  np.testing.assert_allclose(n1, n0, rtol=STEER_NORM_RTOL_F32)
  assert np.abs(steered[1] - base[1]).max() > 1e-2


def test_only_chosen_layers_touched(lm):
  base = _residuals(lm, IDS)
  steered = _residuals(jaxsteer.steer(lm, _vecs(), alpha=3.0), IDS)
  np.testing.assert_array_equal(steered[0], base[0])  # before the steered layer: untouched
  assert np.abs(steered[2] - base[2]).max() > 1e-3  # after it: changed through the residual


def test_alpha_zero_is_identity(lm):
  np.testing.assert_array_equal(
    np.asarray(jaxsteer.steer(lm, _vecs(), alpha=0.0)(IDS)), np.asarray(lm(IDS))
  )


def test_steered_kv_cache_equals_no_cache(lm):
  s = jaxsteer.steer(lm, _vecs(layers=(0, 2)), alpha=[2.0, -1.0])
  prompt, n = [1, 5, 9, 13], 8
  cached = s.generate(prompt, max_new_tokens=n)[0].tolist()
  buf = np.zeros((1, len(prompt) + n), np.int32)
  buf[0, : len(prompt)] = prompt
  for t in range(len(prompt), len(prompt) + n):
    buf[0, t] = int(np.argmax(np.asarray(s(buf))[0, t - 1]))
  assert cached == buf[0, len(prompt) :].tolist()
  assert cached != lm.generate(prompt, max_new_tokens=n)[0].tolist()


def test_new_vectors_and_alpha_do_not_recompile(lm):
  jaxsteer.steer(lm, _vecs(0), alpha=1.0)(IDS).block_until_ready()
  jaxsteer.steer(lm, _vecs(0), alpha=1.0).generate([1, 2, 3], max_new_tokens=4)
  with count_compiles() as c:
    jaxsteer.steer(lm, _vecs(1), alpha=-2.5)(IDS).block_until_ready()
    jaxsteer.steer(lm, _vecs(2), alpha=0.5).generate([1, 2, 3], max_new_tokens=4)
  assert c.count == 0


def test_bfloat16_steering_keeps_dtype():
  lm16 = init_random(CFG, seed=0, dtype=jnp.bfloat16)
  out = jaxsteer.steer(lm16, _vecs(), alpha=1.0)(IDS)
  assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()


def test_capture_matches_return_hidden(lm):
  h = hidden_last(lm, [IDS[0].tolist()], (0, 2))
  _, hidden = lm(IDS, return_hidden=True)
  np.testing.assert_allclose(h[0, 1], np.asarray(hidden[2])[0, -1], rtol=1e-6, atol=1e-6)


def test_bad_input(lm):
  with pytest.raises(ValueError, match="out of range"):
    jaxsteer.steer(lm, {5: np.zeros(16)}, alpha=1.0)
  with pytest.raises(ValueError, match="expected \\(16,\\)"):
    jaxsteer.steer(lm, {1: np.zeros(8)}, alpha=1.0)
  with pytest.raises(ValueError, match="no steering vectors"):
    jaxsteer.steer(lm, {}, alpha=1.0)
  with pytest.raises(ValueError, match="no steering vector for layers"):
    jaxsteer.steer(lm, _vecs(), layers=[2])


def test_sharded_steering_matches(lm):
  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  from jaxsteer.models import param_shardings

  sharded = lm.replace(
    params=jax.device_put(lm.params, param_shardings(lm.params, mesh)), mesh=mesh
  )
  a = np.asarray(jaxsteer.steer(sharded, _vecs(), alpha=2.0)(IDS))
  b = np.asarray(jaxsteer.steer(lm, _vecs(), alpha=2.0)(IDS))
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_non_finite_alpha_or_vectors_rejected(lm):
  with pytest.raises(ValueError, match="alpha must be finite"):
    jaxsteer.steer(lm, _vecs(), alpha=float("nan"))
  with pytest.raises(ValueError, match="alpha must be finite"):
    jaxsteer.steer(lm, _vecs(), alpha=[np.inf])
  with pytest.raises(ValueError, match="layer 1 must be finite"):
    jaxsteer.steer(lm, {1: np.full(16, np.nan)}, alpha=1.0)


def test_mlp_site_adds_to_the_layer_output(lm):
  """The layer's output is x_attn + mlp(.): adding v to the MLP output (plain addition) is adding
  v to the layer output, while adding it to the attention output feeds it through the MLP."""
  v = {1: np.random.default_rng(3).normal(size=16)}
  layer = np.asarray(jaxsteer.steer(lm, v, 1.5, normalize=False)(IDS))
  mlp = np.asarray(jaxsteer.steer(lm, v, 1.5, normalize=False, site="mlp")(IDS))
  attn = np.asarray(jaxsteer.steer(lm, v, 1.5, normalize=False, site="attn")(IDS))
  np.testing.assert_allclose(mlp, layer, rtol=1e-5, atol=1e-5)
  assert not np.array_equal(attn, layer)  # the (small random) MLP sees the attention change
  base = _residuals(lm, IDS)
  st = _residuals(jaxsteer.steer(lm, v, 1.5, normalize=False, site="attn"), IDS)
  np.testing.assert_array_equal(st[0], base[0])
  assert np.abs(st[1] - base[1]).max() > 1e-3


def test_positions_prompt_and_generated(lm):
  v = _vecs(layers=(0, 1))
  plain = np.asarray(lm(IDS))
  # A forward pass has only prompt tokens.
  np.testing.assert_array_equal(
    np.asarray(jaxsteer.steer(lm, v, 3.0, positions="generated")(IDS)), plain
  )
  np.testing.assert_array_equal(
    np.asarray(jaxsteer.steer(lm, v, 3.0, positions="prompt")(IDS)),
    np.asarray(jaxsteer.steer(lm, v, 3.0)(IDS)),
  )
  prompt, n = [1, 5, 9, 13], 6
  gen_only = jaxsteer.steer(lm, v, 8.0, positions="generated").generate(prompt, max_new_tokens=n)
  base = lm.generate(prompt, max_new_tokens=n)
  assert gen_only[0, 0] == base[0, 0]  # the first token comes from the (unsteered) prefill
  prompt_only = jaxsteer.steer(lm, v, 8.0, positions="prompt").generate(prompt, max_new_tokens=n)
  all_pos = jaxsteer.steer(lm, v, 8.0).generate(prompt, max_new_tokens=n)
  assert prompt_only[0, 0] == all_pos[0, 0]  # same prefill
  with count_compiles() as c:
    jaxsteer.steer(lm, v, 2.0, positions="all").generate(prompt, max_new_tokens=n)
  assert c.count == 0  # the position choice is traced
  with pytest.raises(ValueError, match="unknown positions"):
    jaxsteer.steer(lm, v, 1.0, positions="response")
  with pytest.raises(ValueError, match="unknown steering site"):
    jaxsteer.steer(lm, v, 1.0, site="head")
