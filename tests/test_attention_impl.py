"""Attention runs through ``jaxsteer``'s own core (``attend``) or cuDNN; the implementation is selectable.

Parity with transformers (padding, GQA, sliding window) is tests/jaxsteer/test_models_parity.py;
here: the ``attn_implementation`` switch reaches every layer, and the boolean mask reproduces an
independent float64 softmax attention with left padding and a sliding window.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer._src.models.modules import Attention, CausalLM, attention_mask
from jaxsteer.models import ModelConfig

CFG = ModelConfig(
  arch="mistral", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
  num_kv_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=3,
)  # fmt: skip


def test_xla_implementation_equals_default_and_unknown_is_rejected():
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)), jnp.int32)
  mask = jnp.ones((2, 9), jnp.int32).at[0, :2].set(0)
  default = CausalLM(CFG)
  params = default.init(jax.random.key(0), ids)["params"]
  a = default.apply({"params": params}, ids, attention_mask=mask)
  b = CausalLM(CFG, attn_implementation="xla").apply({"params": params}, ids, attention_mask=mask)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="nope"):
    CausalLM(CFG, attn_implementation="nope").apply({"params": params}, ids, attention_mask=mask)


def test_masked_attention_matches_float64_reference():
  rng = np.random.default_rng(1)
  b, t, d = 2, 7, CFG.hidden_size
  x = rng.standard_normal((b, t, d)).astype(np.float32)
  kv_mask = np.ones((b, t), np.int32)
  kv_mask[0, :2] = 0
  slots = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
  pos = np.maximum(np.cumsum(kv_mask, 1) - 1, 0).astype(np.int32)
  cfg = CFG
  mod = Attention(cfg)
  params = mod.init(jax.random.key(2), x, pos, slots, kv_mask)["params"]
  got = np.asarray(mod.apply({"params": params}, x, pos, slots, kv_mask), np.float64)
  # independent reference: float64 numpy with an explicit loop over heads and queries
  from jaxsteer._src.models.config import rope_inv_freq
  from jaxsteer._src.models.modules import apply_rope

  w = {k: np.asarray(v["kernel"], np.float64) for k, v in params.items()}
  h, kvh, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  inv = jnp.asarray(rope_inv_freq(cfg), jnp.float32)
  q = np.asarray(apply_rope(jnp.asarray((x @ w["q_proj"]).reshape(b, t, h, dh), jnp.float32),
                            pos, inv), np.float64)  # fmt: skip
  k = np.asarray(apply_rope(jnp.asarray((x @ w["k_proj"]).reshape(b, t, kvh, dh), jnp.float32),
                            pos, inv), np.float64)  # fmt: skip
  v = (x.astype(np.float64) @ w["v_proj"]).reshape(b, t, kvh, dh)
  out = np.zeros((b, t, h, dh))
  for bi in range(b):
    for hi in range(h):
      kj = hi // (h // kvh)
      for i in range(t):
        ok = [j for j in range(t) if j <= i and j > i - 3 and kv_mask[bi, j]]
        if not ok:  # a padding query: every key masked -> uniform over all keys
          ok = list(range(t))
        s = np.array([q[bi, i, hi] @ k[bi, j, kj] / np.sqrt(dh) for j in ok])
        p = np.exp(s - s.max())
        p /= p.sum()
        out[bi, i, hi] = sum(pj * v[bi, j, kj] for pj, j in zip(p, ok))
  want = out.reshape(b, t, h * dh) @ w["o_proj"]
  real = kv_mask.astype(bool)  # padded query rows are don't-care
  np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-5)
  assert attention_mask(slots, slots, kv_mask, 3).shape == (b, 1, t, t)
