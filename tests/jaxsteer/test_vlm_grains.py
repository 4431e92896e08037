"""GrAInS on a vision-language model: attribution over image patches and text, masking of image
tokens, steering invariants with images, and the CLI's ``--image`` (issue 4)."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compiles
from PIL import Image
from tolerances import STEER_NORM_RTOL_F32, assert_close

import jaxsteer
from jaxsteer import attribution, grains
from jaxsteer._src.attribution import ImageInputs, embed, encode_pair, input_embeddings
from jaxsteer.models import Llama2cTokenizer, LlavaConfig, ModelConfig, VisionConfig
from jaxsteer.models import init_random as init_vlm

IMAGE_TOKEN = 512
TEXT = ModelConfig(
  arch="llama",
  vocab_size=520,
  hidden_size=32,
  intermediate_size=48,
  num_layers=3,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  max_position_embeddings=256,
)
VISION = VisionConfig(
  hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, image_size=112, patch_size=14
)
CONFIG = LlavaConfig(text=TEXT, vision=VISION, image_token_id=IMAGE_TOKEN, image_seq_length=64)
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def vlm(data_dir):
  tok = data_dir / "stories260K" / "tok512.bin"
  if not tok.is_file():
    pytest.skip(f"stories260K tokenizer not found at {tok}")
  return init_vlm(CONFIG, seed=0, tokenizer=Llama2cTokenizer(tok, vocab_size=512))


@pytest.fixture(scope="module")
def images(data_dir):
  d = data_dir / "images"
  if not (d / "chelsea.png").is_file():
    pytest.skip(f"test images not found in {d}")
  return {n: Image.open(d / f"{n}.png").convert("RGB") for n in ("chelsea", "coffee", "astronaut")}


def _attr(vlm, image, steps=8, **kw):
  return attribution.contrastive(
    vlm, vlm.chat_prompt(QUESTION), "A cat.", "A dog.", image=image, steps=steps, **kw
  )


def test_every_image_patch_token_is_scored(vlm, images):
  res = _attr(vlm, images["chelsea"])
  n = vlm.num_image_tokens()
  assert n == (112 // 14) ** 2
  for ids, scores, toks in (
    (res.ids_pos, res.scores_pos, res.tokens_pos),
    (res.ids_neg, res.scores_neg, res.tokens_neg),
  ):
    img = np.flatnonzero(ids == IMAGE_TOKEN)
    assert len(img) == n and len(scores) == len(ids)
    assert np.all(np.diff(img) == 1)  # one contiguous run per image
    assert [toks[i] for i in img[:2]] == ["<img0>", "<img1>"]
    assert np.abs(scores[img]).sum() > 0
  grid = res.image_scores("pos")[0]
  assert grid.shape == (8, 8)
  np.testing.assert_array_equal(grid.reshape(-1), res.scores_pos[res.ids_pos == IMAGE_TOKEN])


def test_image_token_attributions_change_with_the_image(vlm, images):
  a = _attr(vlm, images["chelsea"])
  b = _attr(vlm, images["coffee"])
  a2 = _attr(vlm, images["chelsea"])
  img = a.ids_pos == IMAGE_TOKEN
  np.testing.assert_allclose(a2.scores_pos, a.scores_pos, rtol=1e-5, atol=1e-7)
  diff = np.abs(a.scores_pos[img] - b.scores_pos[img]).max()
  assert diff > 1e-3 * np.abs(a.scores_pos[img]).max()
  # The text scores change too: the image is part of every token's context.
  assert not np.allclose(a.scores_pos[~img], b.scores_pos[~img])
  assert a.objective != b.objective


def test_attribution_input_holds_the_projected_image_features(vlm, images):
  """Regression for the released code's bug B5: the image must enter the attributed input."""
  ids, _, im = encode_pair(vlm, vlm.chat_prompt(QUESTION), "A cat.", images["chelsea"])
  ids = np.asarray([ids])
  x = np.asarray(input_embeddings(vlm, ids, [im]))
  placeholder = np.asarray(attribution.baseline_embeddings(vlm, ids, "pad"))  # text path only
  text_only = np.asarray(embed(vlm, jnp.asarray(ids)))
  img = ids[0] == IMAGE_TOKEN
  np.testing.assert_array_equal(x[0, ~img], text_only[0, ~img])
  assert np.abs(x[0, img] - text_only[0, img]).min() > 0  # not the placeholder's embedding
  # Each image token's vector is the projector's output for its patch (independent path).
  from jaxsteer.models import Llava

  feats = vlm.module.apply(
    {"params": vlm.params}, jnp.asarray(im.pixel_values), method=Llava.image_features
  )
  feats = np.asarray(feats).reshape(-1, TEXT.hidden_size)
  assert_close(x[0, img], feats)
  assert placeholder.shape == x.shape


@pytest.mark.parametrize("steps_pair", [(4, 32)])
def test_ig_completeness_on_a_tiny_vlm(vlm, images, steps_pair):
  lo, hi = (abs(_attr(vlm, images["astronaut"], steps=s).delta) for s in steps_pair)
  res = _attr(vlm, images["astronaut"], steps=steps_pair[1])
  total = res.scores_pos.sum() + res.scores_neg.sum()
  # completeness: the scores add up to f(x) - f(baseline), up to the quadrature error
  np.testing.assert_allclose(total - (res.objective - res.baseline_objective), res.delta, atol=1e-4)
  assert hi < lo and hi < 1e-3


def test_masking_an_image_token_replaces_its_projected_feature(vlm, images):
  ids, n, im = encode_pair(vlm, vlm.chat_prompt(QUESTION), "A cat.", images["coffee"])
  img = np.flatnonzero(np.asarray(ids) == IMAGE_TOKEN)
  mask = np.zeros(len(ids), bool)
  mask[img[[0, 5, 17]]] = True
  mask[n - 2] = True  # and one text token
  got = grains.hidden_last(vlm, [ids], (1, 2), [mask], images=[im])[0]
  # Independent: merged embeddings with the masked rows set to the pad token's embedding.
  x = np.array(vlm.embed_inputs(np.asarray([ids]), im.pixel_values, im.image_sizes))
  pad = np.asarray(embed(vlm, jnp.asarray([[vlm.pad_id]])))[0, 0]
  x[0, mask] = pad
  _, hidden = vlm.apply(None, inputs_embeds=jnp.asarray(x), return_hidden=True)
  want = np.stack([np.asarray(hidden[i])[0, -1] for i in (1, 2)])
  assert_close(got, want, rtol=1e-4, atol=1e-5)
  clean = grains.hidden_last(vlm, [ids], (1, 2), images=[im])[0]
  assert np.abs(clean - got).max() > 1e-4


def _pairs(images):
  prompt = f"USER: <image>\n{QUESTION} ASSISTANT:"
  return [
    grains.Pair(prompt, "A cat.", "A dog.", images["chelsea"]),
    grains.Pair(prompt, "A cup.", "A car.", images["coffee"]),
    grains.Pair(prompt, "A person.", "A tree.", images["astronaut"]),
  ]


def test_fit_with_images_uses_the_vlm_defaults(vlm, images):
  pairs = _pairs(images)
  v = grains.fit(vlm, pairs, layers=[1, 2], steps=4, progress=False)
  assert v.metadata["k"] == 50 and v.metadata["mode"] == "both" and v.metadata["multimodal"]
  assert v.vectors.shape == (2, TEXT.hidden_size) and np.isfinite(v.vectors).all()
  # images= gives the same vectors as Pair.image
  bare = [grains.Pair(p.prompt, p.preferred, p.dispreferred) for p in pairs]
  w = grains.fit(vlm, bare, images=[p.image for p in pairs], layers=[1, 2], steps=4, progress=False)
  np.testing.assert_allclose(w.vectors, v.vectors, rtol=1e-5, atol=1e-6)
  c = grains.caa(vlm, pairs, layers=[1])
  assert c.vectors.shape == (1, TEXT.hidden_size)


def test_fit_errors_name_the_problem(vlm, images, tmp_path):
  pairs = _pairs(images)
  with pytest.raises(ValueError, match="2 images for 3 pairs"):
    grains.fit(vlm, pairs, images=[None, None], layers=[1], progress=False)
  bad = tmp_path / "x.png"
  bad.write_bytes(b"not an image at all")
  with pytest.raises(ValueError, match="cannot decode image"):
    grains.fit(vlm, [grains.Pair(pairs[0].prompt, "a", "b", str(bad))], layers=[1])
  with pytest.raises(ValueError, match="missing image placeholder"):
    grains.fit(vlm, [grains.Pair(QUESTION, "a", "b", images["chelsea"])], layers=[1])
  with pytest.raises(ValueError, match="more images"):
    attribution.contrastive(
      vlm, pairs[0].prompt, "a", "b", image=[images["chelsea"], images["coffee"]]
    )
  lm = jaxsteer.models.init_random(TEXT, tokenizer=vlm.tokenizer)
  with pytest.raises(ValueError, match="not a vision-language model"):
    attribution.contrastive(lm, "Q", "a", "b", image=images["chelsea"])


def test_steering_invariants_with_images(vlm, images):
  ids, _, im = encode_pair(vlm, vlm.chat_prompt(QUESTION), "A cat.", images["chelsea"])
  ids = np.asarray([ids])
  rng = np.random.default_rng(0)
  vecs = grains.SteeringVectors((1,), rng.normal(size=(1, TEXT.hidden_size)).astype(np.float32))
  base, hb = vlm(ids, pixel_values=im.pixel_values, return_hidden=True)
  zero = jaxsteer.steer(vlm, vecs, alpha=0.0)(ids, pixel_values=im.pixel_values)
  assert_close(zero, base)
  steered = jaxsteer.steer(vlm, vecs, alpha=3.0)
  logits, hs = steered(ids, pixel_values=im.pixel_values, return_hidden=True)
  assert_close(hs[0], hb[0])  # layer 0 is not steered
  n0 = np.linalg.norm(np.asarray(hb[1]), axis=-1)
  n1 = np.linalg.norm(np.asarray(hs[1]), axis=-1)
  np.testing.assert_allclose(n1, n0, rtol=STEER_NORM_RTOL_F32)  # image tokens included
  assert np.abs(np.asarray(hs[1]) - np.asarray(hb[1])).max() > 1e-2
  assert np.abs(np.asarray(logits) - np.asarray(base)).max() > 1e-3


def test_steered_generation_with_an_image_recompiles_nothing(vlm, images):
  rng = np.random.default_rng(1)
  vecs = grains.SteeringVectors((2,), rng.normal(size=(1, TEXT.hidden_size)).astype(np.float32))
  prompt = vlm.chat_prompt(QUESTION)
  kw = dict(image=images["chelsea"], max_new_tokens=4)
  a = jaxsteer.steer(vlm, vecs, alpha=1.0).generate(prompt, **kw)
  with count_compiles() as c:
    b = jaxsteer.steer(vlm, vecs, alpha=2.0).generate(prompt, **kw)
  assert c.count == 0
  assert isinstance(a, str) and isinstance(b, str)


def test_patch_score_picture(vlm, images, tmp_path):
  res = _attr(vlm, images["chelsea"], steps=4)
  res.plot_image(tmp_path / "patches.png")
  assert (tmp_path / "patches.png").stat().st_size > 5000
  assert isinstance(res.image_inputs, ImageInputs)


def test_attribution_on_a_sharded_vlm_matches(vlm, images):
  """Parameters placed on a 4x2 (fsdp, tensor) mesh by the rule table give the same scores."""
  import jax

  from jaxsteer.models import param_shardings

  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharded = vlm.replace(params=jax.device_put(vlm.params, param_shardings(vlm.params, mesh)))
  a = _attr(sharded, images["coffee"], steps=4)
  b = _attr(vlm, images["coffee"], steps=4)
  np.testing.assert_allclose(a.scores_pos, b.scores_pos, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(a.scores_neg, b.scores_neg, rtol=1e-4, atol=1e-5)
