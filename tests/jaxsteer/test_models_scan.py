"""Decoder layers through ``nn.scan`` (``ModelConfig.scan_layers``) and ``nn.remat``: the scanned
model equals the unrolled one in logits, every layer's output, steering at every site, capture,
gradients and KV-cache greedy decoding; the real stories260K checkpoint loads scanned (sharded too)
and decodes its golden tokens; ITI and a LLaVA language model work scanned (PaCA / LoRA on scanned
layers: tests/paca_jax/test_scan.py). Gemma 2/3 (mixed sliding and global layers) scanned:
test_models_archs.py."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compiles, tiny_llama_config, tiny_llava_config
from tolerances import assert_close

import jaxsteer
from jaxsteer.grains import CaptureInterceptor, SteeringVectors, hidden_last
from jaxsteer.models import (
  from_params,
  init_random,
  relayout,
  stack_layers,
  unstack_layers,
)

CFG = tiny_llama_config()
IDS = np.array([[1, 5, 9, 13, 17, 21, 3, 7], [2, 4, 6, 8, 10, 12, 14, 16]], np.int32)


@pytest.fixture(scope="module")
def pair():
  """(unrolled, scanned) models with the same weights."""
  lm = init_random(CFG, seed=0)
  return lm, relayout(lm, scan_layers=True)


def test_layouts_convert_both_ways(pair):
  lm, sc = pair
  k = sc.params["layers"]["attn"]["q_proj"]["kernel"]
  assert k.shape == (3, 16, 16) and "layers_0" not in sc.params
  np.testing.assert_array_equal(k[2], lm.params["layers_2"]["attn"]["q_proj"]["kernel"])
  back = unstack_layers(stack_layers(lm.params, 3))
  assert jax.tree.structure(back) == jax.tree.structure(lm.params)
  jax.tree.map(np.testing.assert_array_equal, back, lm.params)
  # from_params stacks per-layer parameters for a scanned config, and unstacks the other way
  sc_cfg = dataclasses.replace(CFG, scan_layers=True)
  assert "layers" in from_params(sc_cfg, lm.params).params
  assert "layers_1" in from_params(CFG, sc.params).params


def test_scanned_init_has_the_stacked_layout(pair):
  sc = pair[1]
  shapes = jax.eval_shape(lambda: sc.module.init(jax.random.key(3), jnp.zeros((1, 2), jnp.int32)))
  assert jax.tree.map(np.shape, shapes["params"]) == jax.tree.map(np.shape, sc.params)


@pytest.mark.parametrize("remat", [None, "full"])
def test_logits_and_every_layer_equal_unrolled(pair, remat):
  lm, sc = pair
  sc = relayout(lm, scan_layers=True, remat=remat)
  mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8], np.int32)  # left padding too
  la, ha = lm(IDS, mask, return_hidden=True)
  lb, hb = sc(IDS, mask, return_hidden=True)
  assert len(hb) == CFG.num_layers
  assert_close(lb, la)
  for i in range(CFG.num_layers):
    assert_close(hb[i], ha[i], err_msg=f"layer {i}")


@pytest.mark.parametrize("site", ["layer", "attn", "mlp"])
def test_steering_equal_per_layer(pair, site):
  lm, sc = pair
  rng = np.random.default_rng(1)
  vecs = SteeringVectors((0, 2), rng.normal(size=(2, 16)).astype(np.float32))
  alpha = np.array([2.0, -3.0], np.float32)
  a = jaxsteer.steer(lm, vecs, alpha, site=site)
  b = jaxsteer.steer(sc, vecs, alpha, site=site)
  la, ha = a(IDS, return_hidden=True)
  lb, hb = b(IDS, return_hidden=True)
  assert_close(lb, la)
  base = lm(IDS, return_hidden=True)[1]
  for i in range(CFG.num_layers):
    assert_close(hb[i], ha[i], err_msg=f"layer {i}")
  # the steered run differs from the base from layer 0 on (100x the float32 tolerance)
  assert np.abs(np.asarray(hb[0]) - np.asarray(base[0])).max() > 1e-3


def test_steering_one_layer_leaves_earlier_layers(pair):
  lm, sc = pair
  vecs = SteeringVectors((1,), np.ones((1, 16), np.float32))
  hb = jaxsteer.steer(sc, vecs, 4.0)(IDS, return_hidden=True)[1]
  base = sc(IDS, return_hidden=True)[1]
  np.testing.assert_array_equal(np.asarray(hb[0]), np.asarray(base[0]))  # layer 0 untouched
  assert np.abs(np.asarray(hb[1]) - np.asarray(base[1])).max() > 1e-2


def test_new_vectors_recompile_nothing(pair):
  _, sc = pair
  rng = np.random.default_rng(2)
  v = lambda: SteeringVectors((1,), rng.normal(size=(1, 16)).astype(np.float32))  # noqa: E731
  jaxsteer.steer(sc, v(), 1.0)(IDS)
  with count_compiles() as c:
    jaxsteer.steer(sc, v(), 2.0)(IDS)
  assert c.count == 0


def test_capture_equal_per_layer(pair):
  lm, sc = pair
  rows = [[1, 5, 9, 13], [2, 4, 6, 8, 10, 12]]
  want = hidden_last(lm, rows, (0, 2))
  got = hidden_last(sc, rows, (0, 2))
  assert np.shape(got) == np.shape(want)
  assert_close(got, want)
  # the interceptor itself: every layer sown, split back into layers_i
  from jaxsteer._src.grains import _sown_residuals
  from jaxsteer._src.models.lm import apply_intercepted

  with nn.intercept_methods(CaptureInterceptor((0, 1, 2))()):
    _, st = apply_intercepted(
      sc.module, None, sc.params, None, jnp.asarray(IDS), mutable=["intermediates"]
    )
  found = _sown_residuals(st["intermediates"])
  ref = lm(IDS, return_hidden=True)[1]
  for i in range(3):
    assert_close(found[f"layers_{i}"], ref[i])


@pytest.mark.parametrize("remat", [None, "dots"])
def test_gradient_equal_unrolled(pair, remat):
  lm, _ = pair
  sc = relayout(lm, scan_layers=True, remat=remat)
  vecs = SteeringVectors((1,), np.ones((1, 16), np.float32))
  a, b = jaxsteer.steer(lm, vecs, 2.0), jaxsteer.steer(sc, vecs, 2.0)

  def loss(model):
    def f(params):
      logits = model.apply(params, jnp.asarray(IDS))
      lp = jax.nn.log_softmax(logits[:, :-1], -1)
      return -jnp.mean(jnp.take_along_axis(lp, jnp.asarray(IDS)[:, 1:, None], -1))

    return f

  ga = jax.jit(jax.grad(loss(a)))(lm.params)
  gb = unstack_layers(jax.jit(jax.grad(loss(b)))(sc.params))
  assert jax.tree.structure(ga) == jax.tree.structure(gb)
  jax.tree.map(lambda x, y: assert_close(y, x), ga, gb)


def test_kv_cache_greedy_decode_equal(pair):
  lm, sc = pair
  ids, mask = np.array([[0, 0, 3, 9, 11], [4, 8, 15, 16, 23]]), np.array([[0, 0, 1, 1, 1], [1] * 5])
  vecs = SteeringVectors((2,), np.ones((1, 16), np.float32) * 0.5)
  a, b = jaxsteer.steer(lm, vecs, 3.0), jaxsteer.steer(sc, vecs, 3.0)
  want = a.generate_ids(ids, mask, max_new_tokens=12, stop_at_eos=False)
  got = b.generate_ids(ids, mask, max_new_tokens=12, stop_at_eos=False)
  np.testing.assert_array_equal(got, want)
  # the steering acts on the cached decode (else this would not test the scanned cache path)
  assert not np.array_equal(want, lm.generate_ids(ids, mask, max_new_tokens=12, stop_at_eos=False))


# stories260K's greedy continuation of BOS (tests/jaxsteer/test_models.py::GOLDEN[:16])
GOLDEN16 = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338]


def test_stories260k_scanned_decodes_golden_tokens_sharded(stories260k):
  ckpt, tok = stories260k
  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  lm = jaxsteer.load(str(ckpt), tokenizer=str(tok), mesh=mesh, scan_layers=True)
  w = lm.params["layers"]["mlp"]["gate_proj"]["kernel"]  # (5, 64, 172): layers x fsdp x tensor
  assert w.shape[0] == lm.config.num_layers
  assert tuple(w.sharding.spec)[:3] == (None, "fsdp", "tensor")
  assert lm.generate([1], max_new_tokens=16)[0].tolist() == GOLDEN16


def test_iti_fitted_and_applied_on_scanned_equals_unrolled(pair):
  """Per-head capture before o_proj (sown per scanned layer), the probes, the chosen heads and
  their residual-form vectors, and the steered logits (applied inside the scan by the traced
  layer index) equal the unrolled model's."""
  from jaxsteer import iti
  from jaxsteer.grains import Pair

  lm, _ = pair
  sc = relayout(lm, scan_layers=True, remat="full")
  pairs = [Pair([1, 5 + i, 9 + (i % 3), 13], [20 + i % 4, 40], [20 + i % 4, 41]) for i in range(10)]
  rows = [p.prompt + p.preferred for p in pairs]
  acts = iti.head_activations(sc, rows)
  assert acts.shape == (10, 3, 4, 4)
  assert_close(acts, iti.head_activations(lm, rows))
  assert np.abs(acts[:, 0] - acts[:, 1]).max() > 1e-3  # layers not mixed up or repeated
  va, vb = iti.fit(lm, pairs, k=3), iti.fit(sc, pairs, k=3)
  assert vb.layers == va.layers
  assert [(h["layer"], h["head"]) for h in vb.metadata["heads"]] == [
    (h["layer"], h["head"]) for h in va.metadata["heads"]
  ]
  assert_close(vb.vectors, va.vectors)
  want = np.asarray(jaxsteer.steer(lm, va, alpha=5.0)(IDS))
  got = np.asarray(jaxsteer.steer(sc, vb, alpha=5.0)(IDS))
  assert_close(got, want)
  assert np.abs(got - np.asarray(sc(IDS))).max() > 1e-3


def test_bad_options():
  with pytest.raises(ValueError, match="remat policy"):
    dataclasses.replace(CFG, remat="everything")


@pytest.fixture(scope="module")
def llava_pair(tmp_path_factory):
  """(transformers LLaVA-1.5, unrolled, scanned with remat) from one tiny saved checkpoint."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.LlavaConfig(**tiny_llava_config())  # image token 64
  model = transformers.LlavaForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "q_proj" in n or "k_proj" in n:
        p.mul_(6.0)  # peaked attention, so the layers differ visibly
  d = tmp_path_factory.mktemp("llava")
  model.save_pretrained(d)
  return model, jaxsteer.load(str(d)), jaxsteer.load(str(d), scan_layers=True, remat="full")


def test_llava_scanned_language_model_equals_unrolled(llava_pair):
  from tolerances import PARITY_ATOL_F32

  from jaxsteer._src.attribution import ImageInputs

  torch = pytest.importorskip("torch")
  model, un, sc = llava_pair
  assert "layers" in sc.params["language_model"] and "layers_0" not in sc.params["language_model"]
  assert sc.config.scan_layers and sc.vlm_config.text.remat == "full"
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(2, 3, 28, 28)).astype(np.float32)
  ids = np.array([[1, 5, 64, 64, 64, 64, 9, 13, 2, 7], [1, 64, 64, 64, 64, 4, 6, 8, 10, 12]])
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits.numpy()
  la, ha = un(ids, pixel_values=pixels, return_hidden=True)
  lb, hb = sc(ids, pixel_values=pixels, return_hidden=True)
  np.testing.assert_allclose(np.asarray(lb), ref, atol=PARITY_ATOL_F32, rtol=0)
  assert_close(lb, la)
  assert len(hb) == 3
  for i in range(3):
    assert_close(hb[i], ha[i], err_msg=f"layer {i}")
  # steering per layer, with images
  vecs = SteeringVectors((0, 2), rng.normal(size=(2, 16)).astype(np.float32))
  alpha = np.array([2.0, -3.0], np.float32)
  sa, sb = jaxsteer.steer(un, vecs, alpha), jaxsteer.steer(sc, vecs, alpha)
  base = ha
  ha = sa(ids, pixel_values=pixels, return_hidden=True)[1]
  hb = sb(ids, pixel_values=pixels, return_hidden=True)[1]
  for i in range(3):
    assert_close(hb[i], ha[i], err_msg=f"steered layer {i}")
  assert np.abs(np.asarray(hb[0]) - np.asarray(base[0])).max() > 1e-3  # the steering acts
  # capture per layer (image rows); cached decoding scanned is tested on the text model above
  images = [ImageInputs(pixels[i : i + 1]) for i in range(2)]
  rows = [list(r) for r in ids]
  assert_close(
    hidden_last(sc, rows, (0, 2), images=images), hidden_last(un, rows, (0, 2), images=images)
  )


def test_llava_relayout_round_trip(llava_pair):
  _, un, sc = llava_pair
  back = relayout(sc, scan_layers=False)
  assert type(back) is type(un) and not back.vlm_config.text.scan_layers
  jax.tree.map(np.testing.assert_array_equal, back.params, un.params)
  again = relayout(un, scan_layers=True)
  jax.tree.map(np.testing.assert_array_equal, again.params, sc.params)
