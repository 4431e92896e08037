"""Integrated Gradients: exactness, convergence, contrastive objective against an independent reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_llama_config
from tolerances import assert_close

import jaxsteer
from jaxsteer import attribution
from jaxsteer.models import init_random

TINY = tiny_llama_config(
  vocab_size=40, num_layers=2, max_position_embeddings=32, bos_token_id=1, eos_token_id=2
)


@pytest.mark.parametrize("method", list(attribution.QUADRATURE))
def test_linear_function_is_exact(method):
  w = jnp.array([1.5, -2.0, 0.25, 3.0])
  x = jnp.array([0.3, 1.0, -2.0, 0.5])
  b = jnp.array([0.1, -0.5, 0.0, 1.0])
  attr, delta = attribution.integrated_gradients(lambda z: w @ z, x, b, steps=5, method=method)
  assert_close(attr, (x - b) * w)
  assert abs(float(delta)) < 1e-5


def test_pytree_inputs_and_chunking_agree():
  x = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}
  f = lambda t: jnp.sum(jnp.sin(t["a"])) * jnp.sum(t["b"] ** 2)
  full, d1 = attribution.integrated_gradients(f, x, steps=12)
  chunked, d2 = jax.jit(lambda t: attribution.integrated_gradients(f, t, steps=12, chunk_size=5))(x)
  jax.tree.map(lambda a, b: assert_close(a, b), full, chunked)
  assert_close(d1, d2)


def test_quadratic_delta_shrinks_with_steps():
  x = jnp.array([1.0, -2.0, 0.5])
  f = lambda z: jnp.sum(z**2) + z[0] * z[1]
  # The path integrand of a quadratic is linear in alpha: left/right sums err like 1/steps,
  # the midpoint and trapezoid rules are exact.
  for method in ("riemann_left", "riemann_right"):
    deltas = [
      abs(float(attribution.integrated_gradients(f, x, steps=s, method=method)[1]))
      for s in (4, 16, 64)
    ]
    assert deltas[0] > deltas[1] > deltas[2]
    assert deltas[0] / deltas[2] > 10
  for method in ("riemann_middle", "riemann_trapezoid"):
    assert abs(float(attribution.integrated_gradients(f, x, steps=3, method=method)[1])) < 1e-5
  # Gauss-Legendre integrates this quadratic path exactly already with 2 points.
  assert abs(float(attribution.integrated_gradients(f, x, steps=2)[1])) < 1e-5


def test_float64_reference_matches_float32():
  f = lambda z: jnp.sum(jnp.tanh(z) ** 3)
  x = np.linspace(-1, 2, 7)
  a32, _ = attribution.integrated_gradients(f, jnp.asarray(x, jnp.float32), steps=16)
  with jax.enable_x64(True):
    a64, _ = attribution.integrated_gradients(f, jnp.asarray(x, jnp.float64), steps=16)
    a64 = np.asarray(a64)
  assert_close(a32, a64, dtype=jnp.float32)


def test_unknown_method():
  with pytest.raises(ValueError, match="unknown IG method"):
    attribution.integrated_gradients(lambda z: z.sum(), jnp.ones(2), method="simpson")


@pytest.fixture(scope="module")
def tiny():
  return init_random(TINY, seed=1)


def test_contrastive_objective_equals_teacher_forced_logprobs(tiny):
  prompt, pos, neg = [1, 5, 6, 7], [9, 10], [11, 12, 13]
  res = attribution.contrastive(tiny, prompt, pos, neg, steps=8)

  def logp(prompt, resp):  # independent: one forward, sum log-softmax at t-1 for each token t
    ids = np.array([prompt + resp])
    lp = np.asarray(jax.nn.log_softmax(tiny(ids)[0].astype(jnp.float32), -1))
    return sum(lp[len(prompt) + i - 1, t] for i, t in enumerate(resp))

  assert_close(res.objective, logp(prompt, pos) - logp(prompt, neg), atol=1e-4)
  assert res.scores_pos.shape == (6,) and res.scores_neg.shape == (7,)


@pytest.mark.parametrize("baseline", ["pad", "mean"])
def test_contrastive_delta_shrinks_with_steps(tiny, baseline):
  deltas = [
    abs(
      attribution.contrastive(
        tiny,
        [1, 5, 6, 7],
        [9, 10],
        [11],
        steps=s,
        max_steps=s,
        on_unconverged="ignore",
        baseline=baseline,
      ).delta
    )
    for s in (2, 8, 32)
  ]
  assert deltas[2] < deltas[0] and deltas[2] < 1e-3


def test_real_model_completeness(stories260k):
  ckpt, tok = stories260k
  lm = jaxsteer.load(str(ckpt), tokenizer=str(tok))
  d = [
    abs(
      attribution.contrastive(
        lm, "Lily was very", "happy.", "sad.", steps=s, max_steps=s, on_unconverged="ignore"
      ).delta
    )
    for s in (10, 50)
  ]
  assert d[1] < d[0] and d[1] < 0.05


def _logp(lm, prompt, resp):
  """Independent teacher-forced log P(resp | prompt): one forward, log-softmax at t - 1."""
  ids = np.array([prompt + resp])
  lp = np.asarray(jax.nn.log_softmax(lm(ids)[0].astype(jnp.float32), -1), np.float64)
  return sum(lp[len(prompt) + i - 1, t] for i, t in enumerate(resp))


def test_default_attribution_is_converged_per_sequence(tiny):
  """From 2 points the default doubles until each sequence's completeness error is <= 5 %."""
  prompt, pos, neg = [1, 5, 6, 7, 8], [9, 10], [11, 12, 13]
  res = attribution.contrastive(tiny, prompt, pos, neg, steps=2, baseline="zeros")
  assert res.converged and res.steps > 2 and res.rel_error <= 0.05
  # Check completeness per sequence against independent forwards: F_s(x) from token ids and
  # F_s(baseline) from an all-zero embedded input.
  zero = lambda ids: np.asarray(
    jax.nn.log_softmax(
      tiny.apply(None, inputs_embeds=jnp.zeros((1, len(ids), TINY.hidden_size))), -1
    )[0],
    np.float64,
  )
  for ids, n, scores, sign in (
    (prompt + pos, len(prompt), res.scores_pos, 1.0),
    (prompt + neg, len(prompt), res.scores_neg, -1.0),
  ):
    lz = zero(ids)
    f_b = sum(lz[n + i - 1, t] for i, t in enumerate(ids[n:]))
    change = sign * (_logp(tiny, ids[:n], ids[n:]) - f_b)
    assert abs(float(np.sum(scores)) - change) <= 0.05 * abs(change) + 1e-3
  fixed = attribution.contrastive(
    tiny, prompt, pos, neg, steps=2, max_steps=2, baseline="zeros", on_unconverged="ignore"
  )
  assert not fixed.converged and fixed.rel_error > 0.05 and fixed.steps == 2


def test_unconverged_policy(tiny):
  args = (tiny, [1, 5, 6, 7, 8], [9, 10], [11, 12, 13])
  kw = dict(steps=2, max_steps=2, baseline="zeros")
  with pytest.raises(attribution.IGConvergenceError, match=r"pair 0 .*error .* at 2 points"):
    attribution.contrastive(*args, **kw)
  with pytest.warns(attribution.IGConvergenceWarning, match="did not converge"):
    attribution.contrastive(*args, on_unconverged="warn", **kw)
  with pytest.raises(ValueError, match="on_unconverged"):
    attribution.contrastive(*args, on_unconverged="maybe")
  with pytest.raises(ValueError, match="max_steps"):
    attribution.contrastive(*args, steps=8, max_steps=4)


def test_pictures(tiny, tmp_path):
  res = attribution.contrastive(tiny, [1, 5, 6], [9], [10], steps=4)
  html = res.to_html()
  assert html.count("<span") == 4 + 4
  res.plot(tmp_path / "s.png")
  assert (tmp_path / "s.png").stat().st_size > 1000


def test_contrastive_on_sharded_model_matches(tiny):
  from jaxsteer.models import param_shardings

  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharded = tiny.replace(params=jax.device_put(tiny.params, param_shardings(tiny.params, mesh)))
  a = attribution.contrastive(sharded, [1, 5, 6, 7], [9, 10], [11], steps=4, chunk_size=2)
  b = attribution.contrastive(tiny, [1, 5, 6, 7], [9, 10], [11], steps=4)
  np.testing.assert_allclose(a.scores_pos, b.scores_pos, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a.scores_neg, b.scores_neg, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_response_only_projection_matches_full_logits(tiny, reduce):
  """``sequence_logprob`` with ``n_resp`` (only the positions predicting response tokens reach the
  vocabulary, what IG runs) equals a float64 NumPy log-likelihood from the model's full logits,
  for rows with different prompt/response lengths and right padding, and so do its gradients
  (compared with the full-projection path's)."""
  rng = np.random.default_rng(3)
  ids = rng.integers(3, TINY.vocab_size, (3, 12)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 9:] = 0  # padded row
  resp = mask.copy()
  for row, start in enumerate((7, 4, 11)):  # responses of 5, 5 and 1 tokens
    resp[row, :start] = 0
  n = attribution.response_width([resp], 12)
  assert n == 8
  e = tiny.module.apply({"params": tiny.params}, jnp.asarray(ids), method="embed_tokens")
  got = attribution.sequence_logprob(tiny, e, ids, mask, resp, reduce=reduce, n_resp=n)
  full = np.asarray(tiny(ids, mask), np.float64)
  lp = full - full.max(-1, keepdims=True)
  lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
  want = np.array(
    [sum(lp[b, t - 1, ids[b, t]] for t in range(1, 12) if resp[b, t]) for b in range(3)]
  )
  if reduce == "mean":
    want = want / resp[:, 1:].sum(-1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)

  def total(x, k):
    return jnp.sum(attribution.sequence_logprob(tiny, x, ids, mask, resp, reduce=reduce, n_resp=k))

  g_sel, g_full = jax.grad(total)(e, n), jax.grad(total)(e, None)
  np.testing.assert_allclose(np.asarray(g_sel), np.asarray(g_full), rtol=1e-5, atol=1e-6)
