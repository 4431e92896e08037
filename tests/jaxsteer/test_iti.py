"""ITI: the residual form applied by ``steer`` equals shifting the chosen heads before o_proj."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_llama_config

import jaxsteer
from jaxsteer import grains, iti
from jaxsteer._src.models.lm import apply_intercepted
from jaxsteer.models import init_random

CFG = tiny_llama_config()
# The preferred response ends in token 40, the dispreferred in 41: easy to probe.
PAIRS = [
  grains.Pair([1, 5 + i, 9 + (i % 3), 13], [20 + i % 4, 40], [20 + i % 4, 41]) for i in range(10)
]
IDS = np.array([[1, 5, 9, 13, 17, 21, 3, 7]])


@pytest.fixture(scope="module")
def lm():
  return init_random(CFG, seed=0)


@pytest.fixture(scope="module")
def vecs(lm):
  return iti.fit(lm, PAIRS, k=3)


def _head_shift(lm, heads, alpha, ids):
  """Independent: add alpha * sigma * theta to each chosen head's slice of the o_proj input."""

  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name == "__call__" and m.name == "o_proj":
      layer = int(m.path[-3].split("_")[1])
      x = args[0]
      for h in heads:
        if h["layer"] == layer:
          sl = slice(h["head"] * CFG.head_dim, (h["head"] + 1) * CFG.head_dim)
          x = x.at[..., sl].add(alpha * h["sigma"] * jnp.asarray(h["theta"]))
      return next_fun(x, *args[1:], **kwargs)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    return np.asarray(apply_intercepted(lm.module, None, lm.params, None, jnp.asarray(ids)))


def test_residual_form_equals_the_head_shift(lm, vecs):
  m = vecs.metadata
  assert m["method"] == "iti" and m["site"] == "attn" and len(m["heads"]) == 3
  got = np.asarray(jaxsteer.steer(lm, vecs, alpha=5.0)(IDS))
  want = _head_shift(lm, m["heads"], 5.0, IDS)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert np.abs(got - np.asarray(lm(IDS))).max() > 1e-3


def test_directions_point_from_false_to_true(lm, vecs):
  acts = iti.head_activations(lm, [p.prompt + p.preferred for p in PAIRS])
  neg = iti.head_activations(lm, [p.prompt + p.dispreferred for p in PAIRS])
  for h in vecs.metadata["heads"]:
    th = np.asarray(h["theta"])
    a = acts[:, h["layer"], h["head"]] @ th
    b = neg[:, h["layer"], h["head"]] @ th
    assert a.mean() > b.mean()  # a flipped theta fails
    assert h["val_accuracy"] >= 0.5 and h["sigma"] > 0
    np.testing.assert_allclose(np.linalg.norm(th), 1.0, rtol=1e-5)


def test_kv_cache_generation_and_bad_input(lm, vecs):
  s = jaxsteer.steer(lm, vecs, alpha=4.0)
  prompt, n = [1, 5, 9, 13], 5
  cached = s.generate(prompt, max_new_tokens=n)[0].tolist()
  buf = np.zeros((1, len(prompt) + n), np.int32)
  buf[0, : len(prompt)] = prompt
  for t in range(len(prompt), len(prompt) + n):
    buf[0, t] = int(np.argmax(np.asarray(s(buf[:, :t]))[0, t - 1]))
  assert cached == buf[0, len(prompt) :].tolist()
  with pytest.raises(ValueError, match="at least 5 pairs"):
    iti.fit(lm, PAIRS[:3])
  with pytest.raises(ValueError, match="k must lie"):
    iti.fit(lm, PAIRS, k=99)
