"""PaCA on the project's Llama models (jaxsteer.models, stories260K llama2.c checkpoint)."""

import jax
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict
from tolerances import assert_close

import paca_jax
from paca_jax.export import apply_lora, to_lora

TARGETS = r".*(q|k|v|o|gate|up|down)_proj"


def test_paca_on_stories260k(stories260k):
  jaxsteer = pytest.importorskip("jaxsteer")
  ckpt, _ = stories260k
  lm = jaxsteer.load(ckpt)
  params = lm.params
  plan = paca_jax.select(params, TARGETS, 4, jax.random.key(0))
  assert len(plan) == 7 * lm.config.num_layers
  assert "layers_0/attn/q_proj" in plan and "layers_0/mlp/gate_proj" in plan
  method = paca_jax.Paca(plan)

  def loss_fn(p, b):
    return paca_jax.models.lm_loss(lm.module.apply({"params": p}, b["x"]), b["y"])

  tr = paca_jax.Trainer(method, loss_fn, optax.adam(1e-2))
  st = tr.init(params)
  toks = jax.random.randint(jax.random.key(1), (4, 17), 0, lm.config.vocab_size)
  batch = {"x": toks[:, :-1], "y": toks[:, 1:]}
  losses = []
  for _ in range(3):
    st, loss = tr.step(st, batch)
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  st = tr.flush(st)
  for e in plan:
    k0 = np.asarray(flatten_dict(params, sep="/")[e.path + "/kernel"])
    k1 = np.asarray(flatten_dict(st.frozen, sep="/")[e.path + "/kernel"])
    assert set(np.flatnonzero(np.any(k0 != k1, axis=1)).tolist()) == set(e.idx)
  with method.context(st.frozen, st.trainable):
    want = lm.module.apply({"params": st.frozen}, batch["x"])
  merged = apply_lora(params, to_lora(method, params, st.trainable))
  assert_close(lm.module.apply({"params": merged}, batch["x"]), want)
