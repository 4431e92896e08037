"""Qwen3, Llama 3.2, Phi-3, Gemma 2 and Gemma 3 text against transformers (PyTorch, CPU).

Each architecture is checked on a tiny random checkpoint written by transformers 5, and again with
its ``config.json`` rewritten in the transformers 4.x form found on the hub (``rope_theta`` +
``rope_scaling``, Phi-3's ``su``, Gemma's ``sliding_window_pattern`` / ``rope_local_base_freq``,
no ``layer_types``). Sequences are longer than the sliding windows and than Phi-3's original
context, so local attention and LongRoPE's long factors are exercised.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import PARITY_ATOL_F32, assert_close

import jaxsteer
from jaxsteer.grains import CaptureInterceptor, SteeringVectors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V = 97
BASE = dict(
  vocab_size=V,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
)
ROT = 8 // 2  # Phi-3's rotary pairs per head (head_dim 8, partial_rotary_factor 1)

CASES = {
  "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(BASE, head_dim=16, rope_theta=1e6)),
  "llama32": (
    "LlamaConfig",
    "LlamaForCausalLM",
    dict(
      BASE,
      tie_word_embeddings=True,
      rope_theta=500000.0,
      rope_scaling=dict(
        rope_type="llama3",
        factor=32.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8,
      ),
    ),
  ),
  "phi3_longrope": (
    "Phi3Config",
    "Phi3ForCausalLM",
    dict(
      BASE,
      original_max_position_embeddings=8,
      sliding_window=6,
      pad_token_id=0,
      eos_token_id=2,
      rope_scaling=dict(
        type="longrope",
        short_factor=[1.0, 1.5, 2.0, 3.0],
        long_factor=[2.0, 4.0, 8.0, 16.0],
      ),
    ),
  ),
  "gemma2": (
    "Gemma2Config",
    "Gemma2ForCausalLM",
    dict(
      BASE,
      num_hidden_layers=3,
      head_dim=16,
      query_pre_attn_scalar=12,
      sliding_window=4,
      attn_logit_softcapping=2.0,
      final_logit_softcapping=3.0,
    ),
  ),
  "gemma3": (
    "Gemma3TextConfig",
    "Gemma3ForCausalLM",
    dict(
      BASE,
      num_hidden_layers=3,
      head_dim=16,
      query_pre_attn_scalar=12,
      sliding_window=4,
      sliding_window_pattern=3,
      rope_theta=1e6,
      rope_local_base_freq=100.0,
      rope_scaling=dict(rope_type="linear", factor=4.0),
    ),
  ),
}


def _as_transformers4(cfg: dict, name: str) -> dict:
  """The same model's config as transformers 4.x wrote it."""
  cfg = dict(cfg)
  rope = cfg.pop("rope_parameters", None) or {}
  cfg.pop("layer_types", None)
  kw = CASES[name][2]
  if name == "gemma3":
    cfg["rope_theta"] = rope["full_attention"]["rope_theta"]
    cfg["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    cfg["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    cfg["sliding_window_pattern"] = 3
  else:
    cfg["rope_theta"] = rope["rope_theta"]
    if "rope_scaling" in kw:
      scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
      if name == "phi3_longrope":  # Phi-3-mini-128k's hub form
        scaling = {"type": "su", **{k: v for k, v in scaling.items() if k != "rope_type"}}
        scaling.pop("original_max_position_embeddings", None)
      cfg["rope_scaling"] = scaling
  if name.startswith("gemma"):
    cfg["hidden_act"] = cfg["hidden_activation"]
  return cfg


def _save(tmp_path, name):
  cfg_cls, model_cls, kw = CASES[name]
  torch.manual_seed(0)
  cfg = getattr(transformers, cfg_cls)(**kw)
  model = getattr(transformers, model_cls)(cfg).eval()
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "norm" in n:  # random norm weights, so a wrong mapping of them cannot pass
        p.add_(0.3 * torch.randn_like(p))
      if any(k in n for k in ("q_proj", "k_proj", "qkv_proj")):
        # Peaked attention (init std 0.02 leaves it uniform), so that RoPE, windows and
        # soft-capping visibly change the logits.
        p.mul_(6.0)
  d = tmp_path / name
  model.save_pretrained(d)
  return model, d


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
  name = request.param
  model, d = _save(tmp_path_factory.mktemp("m"), name)
  return name, model, d


def _ref(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.numpy()


def test_logits_match_transformers_both_config_forms(case, tmp_path):
  name, model, d = case
  rng = np.random.default_rng(0)
  ids = rng.integers(0, V, size=(2, 12))  # longer than windows and Phi-3's original context
  short = ids[:, :5]  # within it: LongRoPE's short factors
  lm5 = jaxsteer.load(str(d))
  old = tmp_path / "tf4"
  old.mkdir()
  for f in d.iterdir():
    (old / f.name).write_bytes(f.read_bytes())
  hf = json.loads((d / "config.json").read_text())
  (old / "config.json").write_text(json.dumps(_as_transformers4(hf, name)))
  lm4 = jaxsteer.load(str(old))
  assert lm4.config == lm5.config
  for x in (ids, short):
    ref = _ref(model, x)
    np.testing.assert_allclose(np.asarray(lm5(x)), ref, atol=PARITY_ATOL_F32, rtol=0)
  np.testing.assert_allclose(np.asarray(lm4(ids)), _ref(model, ids), atol=PARITY_ATOL_F32, rtol=0)


def test_features_are_active(case):
  """The distinguishing feature of each case changes the logits (the parity is not vacuous)."""
  name, model, d = case
  import dataclasses

  lm = jaxsteer.load(str(d))
  c = lm.config
  off = {
    "qwen3": None,
    "llama32": dict(rope_scaling=None),
    "phi3_longrope": dict(rope_scaling=None),
    "gemma2": dict(attn_logit_softcapping=None, final_logit_softcapping=None),
    "gemma3": dict(rope_local_theta=None),
  }[name]
  if off is None:
    assert c.qk_norm and "layers_0/attn/q_norm/scale" in _flat(lm.params)
    return
  ids = np.arange(40)[None] * 7 % V
  other = lm.replace(module=type(lm.module)(dataclasses.replace(c, **off)))
  # Ten times the parity tolerance: dropping the feature would fail the parity test.
  assert np.abs(np.asarray(lm(ids)) - np.asarray(other(ids))).max() > 10 * PARITY_ATOL_F32


def _flat(params):
  from flax import traverse_util

  return traverse_util.flatten_dict(params, sep="/")


def test_kv_cache_greedy_equals_no_cache_argmax(case):
  name, model, d = case
  lm = jaxsteer.load(str(d))
  prompt = [3, 14, 15, 92, 65]
  # LongRoPE switches factors with the sequence length, so cached keys of a shorter prefix differ
  # from a full recompute once it passes original_max_position_embeddings (8): stay below it.
  n = 3 if name == "phi3_longrope" else 9
  out = lm.generate_ids(np.array([prompt]), max_new_tokens=n, stop_at_eos=False)[0].tolist()
  # No cache: full forwards over one fixed-width buffer (right padding cannot change earlier
  # positions of a causal model; the buffer stays within LongRoPE's short regime), one program.
  buf = np.zeros((1, len(prompt) + n), np.int32)
  buf[0, : len(prompt)] = prompt
  for t in range(len(prompt), len(prompt) + n):
    buf[0, t] = int(np.argmax(np.asarray(lm(buf))[0, t - 1]))
  assert out == buf[0, len(prompt) :].tolist()


def test_phi3_generation_past_the_original_context_matches_transformers(case):
  """A prompt already past original_max_position_embeddings (8): the whole generation uses the
  long factors in both libraries, and greedy tokens equal transformers' ``generate``.

  Known difference (not tested): a generation that *crosses* the threshold keeps its short-factor
  keys in jaxsteer's cache, while transformers' Phi-3 drops its cache at the switch and recomputes
  it with the long factors; tokens after the switch can then differ.
  """
  name, model, d = case
  if name != "phi3_longrope":
    pytest.skip("LongRoPE only")
  lm = jaxsteer.load(str(d))
  prompt = np.array([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])
  out = lm.generate_ids(prompt, max_new_tokens=6, stop_at_eos=False)
  with torch.no_grad():
    ref = model.generate(
      torch.tensor(prompt), max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0
    )[:, prompt.shape[1] :].numpy()
  np.testing.assert_array_equal(out, ref)


def test_steering_and_capture(case):
  name, model, d = case
  lm = jaxsteer.load(str(d))
  ids = np.array([[1, 5, 9, 13, 17, 21]])
  _, hidden = lm(ids, return_hidden=True)
  import flax.linen as nn

  from jaxsteer._src.models.lm import apply_intercepted

  with nn.intercept_methods(CaptureInterceptor((0, 1))()):
    _, st = apply_intercepted(
      lm.module, None, lm.params, None, jnp.asarray(ids), mutable=["intermediates"]
    )
  got = np.asarray(st["intermediates"]["layers_1"]["residual"][0])
  assert_close(got, hidden[1], "float32")  # eager capture vs the jitted forward
  vec = SteeringVectors((1,), np.ones((1, 32), np.float32))
  steered = jaxsteer.steer(lm, vec, alpha=4.0)
  assert np.abs(np.asarray(steered(ids)) - np.asarray(lm(ids))).max() > 1e-3


def test_sharded_load_matches(case):
  import jax

  name, model, d = case
  mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  lm = jaxsteer.load(str(d))
  sh = jaxsteer.load(str(d), mesh=mesh)
  ids = np.arange(10)[None] % V
  np.testing.assert_allclose(np.asarray(sh(ids)), np.asarray(lm(ids)), atol=1e-5, rtol=0)


def test_gemma_scanned_layers_match_transformers_and_unrolled(case):
  """Gemma 2 / 3 with ``scan_layers``: each scanned layer picks its window (and Gemma 3 its RoPE
  base and scaling) by its traced index; the scanned model equals transformers, and the unrolled
  model in logits, every layer, steering per layer and KV-cache greedy decoding."""
  name, model, d = case
  if not name.startswith("gemma"):
    pytest.skip("mixed sliding/global layers: Gemma only")
  lm = jaxsteer.load(str(d))
  sc = jaxsteer.load(str(d), scan_layers=True, remat="full")
  kinds = [lm.config.layer_is_sliding(i) for i in range(3)]
  assert len(set(kinds)) == 2 and "layers" in sc.params  # mixed, and really scanned
  ids = np.random.default_rng(0).integers(0, V, size=(2, 12))  # longer than the window (4)
  la, ha = lm(ids, return_hidden=True)
  lb, hb = sc(ids, return_hidden=True)
  np.testing.assert_allclose(np.asarray(lb), _ref(model, ids), atol=PARITY_ATOL_F32, rtol=0)
  assert_close(lb, la)
  for i in range(3):
    assert_close(hb[i], ha[i], err_msg=f"layer {i}")
  vecs = SteeringVectors((0, 2), np.random.default_rng(1).normal(size=(2, 32)).astype(np.float32))
  alpha = np.array([3.0, -2.0], np.float32)
  sa, sb = jaxsteer.steer(lm, vecs, alpha), jaxsteer.steer(sc, vecs, alpha)
  ha, hb = sa(ids, return_hidden=True)[1], sb(ids, return_hidden=True)[1]
  for i in range(3):
    assert_close(hb[i], ha[i], err_msg=f"steered layer {i}")
  # cached decode past the window: the sliding layers' masks act on the KV cache too
  prompt, mask = ids[:, :6], np.array([[0, 0, 1, 1, 1, 1], [1] * 6])
  want = sa.generate_ids(prompt, mask, max_new_tokens=8, stop_at_eos=False)
  got = sb.generate_ids(prompt, mask, max_new_tokens=8, stop_at_eos=False)
  np.testing.assert_array_equal(got, want)


def test_last_layer_positions_match_transformers(case):
  """``last_layer_positions``: the last layer at a few positions only (what IG's objective reads)
  gives transformers' logits there, for every architecture (windows, soft-caps, sandwich norms,
  q/k norms, LongRoPE), with positions unsorted and different per row."""
  name, model, d = case
  lm = jaxsteer.load(str(d))
  rng = np.random.default_rng(1)
  ids = rng.integers(0, V, size=(2, 12))
  sel = np.array([[11, 3, 7, 0], [5, 11, 2, 9]], np.int32)
  logits, hidden = lm.module.apply(
    {"params": lm.params},
    jnp.asarray(ids, jnp.int32),
    return_hidden=True,
    last_layer_positions=jnp.asarray(sel),
  )
  assert logits.shape == (2, 4, V) and hidden[-1].shape == (2, 4, 32)
  want = np.take_along_axis(_ref(model, ids), sel[..., None], axis=1)
  assert_close(logits, want, atol=PARITY_ATOL_F32)
  with pytest.raises(ValueError, match="unrolled layers"):
    lm.module.apply(
      {"params": lm.params},
      jnp.asarray(ids, jnp.int32),
      decode=True,
      positions=jnp.zeros((2, 12), jnp.int32),
      last_layer_positions=jnp.asarray(sel),
    )
