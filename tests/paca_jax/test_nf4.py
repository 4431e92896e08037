"""NF4 QPaCA and the QLoRA-style LoRA baseline: the quantiser against an independent NumPy
reference of QLoRA's algorithm, the partial matmul's gradients against float autodiff on the
dequantised weight, training, merging and the frozen-base memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict
from tolerances import assert_close

import paca_jax

# QLoRA paper, appendix E / bitsandbytes `create_normal_map` (typed in independently).
QLORA_NF4 = [
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
  0.7229568362236023, 1.0,
]  # fmt: skip


def _reference_nf4(w, block):
  """Nearest-code NF4 by brute force (argmin over the 16 values), per block of ``block``."""
  flat = np.asarray(w, np.float64).reshape(-1)
  n = flat.size
  flat = np.pad(flat, (0, -n % block)).reshape(-1, block)
  absmax = np.abs(flat).max(axis=1)
  table = np.asarray(QLORA_NF4)
  codes = np.abs(flat[..., None] / absmax[:, None, None] - table).argmin(-1)
  return codes.reshape(-1), absmax, (table[codes] * absmax[:, None]).reshape(-1)[:n]


def test_table_is_qlora_and_quantiser_matches_reference():
  np.testing.assert_array_equal(paca_jax.NF4_TABLE, np.float32(QLORA_NF4))
  w = np.random.default_rng(0).standard_normal((24, 40)).astype(np.float32)
  q = paca_jax.quantize_nf4(w, 64)
  codes, absmax, deq = _reference_nf4(w, 64)
  packed = np.asarray(q["nf4"])
  assert packed.dtype == np.uint8 and packed.size == codes.size // 2
  np.testing.assert_array_equal(packed >> 4, codes[0::2])  # first code in the high nibble
  np.testing.assert_array_equal(packed & 15, codes[1::2])
  assert_close(q["absmax"], absmax.astype(np.float32))
  got = paca_jax.dequantize_nf4(q, w.shape, 64)
  assert_close(got, deq.reshape(w.shape).astype(np.float32))
  # double quantisation: 8-bit scales, dequantised weight within a tiny relative error
  qd = paca_jax.quantize_nf4(w, 64, double_quant=True)
  assert qd["absmax_q"].dtype == jnp.int8 and "absmax" not in qd
  err = np.abs(np.asarray(paca_jax.dequantize_nf4(qd, w.shape, 64)) - np.asarray(got)).max()
  assert 0 < err < 0.01 * np.abs(w).max()


def test_nf4_partial_matmul_gradients_match_float_autodiff():
  rng = np.random.default_rng(1)
  out, inp, r = 6, 10, 3
  idx = (1, 4, 8)
  w = rng.standard_normal((out, inp)).astype(np.float32)
  w[:, list(idx)] = 0  # PaCA's base holds no selected columns
  q = paca_jax.quantize_nf4(w, 8)
  wd = np.asarray(paca_jax.dequantize_nf4(q, (out, inp), 8))
  x = jnp.asarray(rng.standard_normal((2, 5, inp)), jnp.float32)
  p = jnp.asarray(rng.standard_normal((r, out)), jnp.float32)

  def f(x, p):
    return jnp.sum(jnp.sin(paca_jax.nf4_partial_matmul(x, q, p, idx, (out, inp), 8)))

  def ref(x, p):
    k = jnp.asarray(wd.T).at[jnp.asarray(idx)].set(p)  # Flax (in, out) with rows replaced
    return jnp.sum(jnp.sin(x @ k))

  assert_close(f(x, p), ref(x, p))
  for g, h in zip(jax.grad(f, (0, 1))(x, p), jax.grad(ref, (0, 1))(x, p)):
    assert_close(g, h)
  gx = jax.grad(lambda x: jnp.sum(jnp.sin(paca_jax.nf4_matmul(x, q, (out, inp), 8))))(x)
  assert_close(gx, jax.grad(lambda x: jnp.sum(jnp.sin(x @ wd.T)))(x))


def test_nf4_paca_and_qlora_train_and_merge(tiny):
  model, params, batch = tiny
  plan = paca_jax.select(params, r".*_proj", 4, jax.random.key(1))
  methods = {
    "paca_nf4": paca_jax.PacaNf4(plan, block_size=8, double_quant=True),
    "lora_nf4": paca_jax.LoraNf4(paca_jax.lora_plan(params, r".*_proj", 2), block_size=8),
  }
  for name, method in methods.items():
    tr = paca_jax.Trainer(method, paca_jax.lm_loss_fn(model), optax.adam(1e-2))
    st = tr.init(params, jax.random.key(2))
    losses = []
    for _ in range(3):
      st, loss = tr.step(st, batch)
      losses.append(float(loss))
    assert losses[-1] < losses[0], name
    assert np.isfinite(losses).all()
    assert "kernel" not in st.frozen["params"]["layers_0"]["attn"]["q_proj"]  # base left
    with method.context(st.frozen, st.trainable):
      want = model.apply({"params": method.model_params(st.frozen, st.trainable)}, batch["x"])
    merged = tr.merged_params(st)
    assert_close(model.apply({"params": merged}, batch["x"]), want, err_msg=name)
    if name == "paca_nf4":
      e = plan["layers_0/attn/q_proj"]
      k = np.asarray(flatten_dict(merged, sep="/")[e.path + "/kernel"])
      np.testing.assert_array_equal(
        k[list(e.idx)], np.asarray(paca_jax.row_values(plan, st.trainable, e.path))
      )


def test_nf4_frozen_base_is_smaller_than_int8_and_float():
  # one 256 x 256 kernel: float32 256 KiB, int8 64 KiB + scales, NF4 32 KiB + 4 KiB scales
  w = {"d": {"kernel": jnp.ones((256, 256), jnp.float32)}}
  plan = paca_jax.select(w, "d", 8, jax.random.key(0))

  def nbytes(method):
    frozen, _ = method.init(w)
    return sum(a.nbytes for a in jax.tree.leaves(frozen))

  f32, i8 = 256 * 256 * 4, nbytes(paca_jax.PacaInt8(plan))
  n4 = nbytes(paca_jax.PacaNf4(plan))
  n4dq = nbytes(paca_jax.PacaNf4(plan, double_quant=True))
  assert n4 == 256 * 256 // 2 + 4 * 256 * 256 // 64
  assert n4dq < n4 < i8 < f32
  assert abs(8 * n4dq / (256 * 256) - 4.127) < 0.01  # bits per weight with double quantisation
