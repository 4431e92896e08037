"""LLaVA-1.5 / LLaVA-NeXT (jaxsteer.models.VisionLanguageModel) against HF transformers on tiny
random checkpoints and real images."""

import pathlib

import jax
import numpy as np
import pytest
from helpers import count_compiles, tiny_llava_config
from tolerances import PARITY_ATOL_F32

import jaxsteer
from jaxsteer.models import LlavaConfig, VisionLanguageModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

IMAGE_TOKEN = 32000  # "<image>" added to the Llama-2 tokenizer (32000 pieces)
# A 2-layer, 32-wide Llama over the Llama-2 vocabulary and a 32-wide CLIP tower.
TEXT = dict(
  vocab_size=32064,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  max_position_embeddings=512,
)
VISION = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, projection_dim=16)
# NeXT: 4x4 patches per 56-pixel tile; the pinpoints give a square image 1 tile and a landscape
# (portrait) one a 1x2 (2x1) grid whose unpadding crops columns (rows).
PINPOINTS = [[56, 56], [56, 112], [112, 56]]
CASES = {
  "llava_default": (
    "llava",
    tiny_llava_config(text=TEXT, vision=VISION, image_token_id=IMAGE_TOKEN),
  ),
  "llava_full_layers": (
    "llava",
    tiny_llava_config(
      text=TEXT,
      vision=VISION,
      image_token_id=IMAGE_TOKEN,
      vision_feature_select_strategy="full",
      vision_feature_layer=[0, -1],
      projector_hidden_act="quick_gelu",
    ),
  ),
  "llava_next": (
    "llava_next",
    tiny_llava_config(
      text=TEXT,
      vision=dict(VISION, image_size=56),
      image_token_id=IMAGE_TOKEN,
      image_grid_pinpoints=PINPOINTS,
      vision_feature_layer=1,
    ),
  ),
}


def _make_hf(name):
  kind, kw = CASES[name]
  torch.manual_seed(0)
  if kind == "llava":
    model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**kw))
  else:
    model = transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig(**kw))
  model.eval()
  # Random biases / norm weights so that a wrong mapping of them cannot pass.
  with torch.no_grad():
    for n, p in model.named_parameters():
      if n.endswith("bias") or "norm" in n or "layrnorm" in n or "newline" in n:
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def tok_dir(data_dir, tmp_path_factory):
  sp = data_dir / "llama2_tokenizer" / "tokenizer.model"
  if not sp.is_file():
    pytest.skip(f"Llama-2 tokenizer not found at {sp}")
  # BOS on, as in the llava-hf tokenizers (a bare tokenizer.model loads without it).
  tok = transformers.LlamaTokenizer.from_pretrained(str(sp.parent), add_bos_token=True)
  tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
  assert tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN
  d = tmp_path_factory.mktemp("tok")
  tok.save_pretrained(d)
  return d


@pytest.fixture(scope="module")
def images(data_dir):
  d = data_dir / "images"
  paths = {n: d / n for n in ("astronaut.png", "chelsea.png", "rocket.jpg")}
  missing = [str(p) for p in paths.values() if not p.is_file()]
  if missing:
    pytest.skip(f"test images not found: {missing}")
  return paths


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok_dir):
  """name -> (HF model, directory with its safetensors and the tokenizer); each saved once."""
  cache = {}

  def get(name):
    if name not in cache:
      model = _make_hf(name)
      d = tmp_path_factory.mktemp(name)
      model.save_pretrained(d)
      for f in pathlib.Path(tok_dir).iterdir():
        (d / f.name).write_bytes(f.read_bytes())
      cache[name] = (model, d)
    return cache[name]

  return get


def _row(rng, n_text, parts, width):
  """BOS, random text ids and image-token runs (``parts``: ints = image-token run lengths)."""
  ids = [1]
  for n in parts:
    ids += list(rng.integers(3, 32000, size=n_text)) + [IMAGE_TOKEN] * n
  ids += list(rng.integers(3, 32000, size=width - len(ids)))
  return ids


def _hf_logits(model, ids, pixels, sizes=None):
  kw = dict(input_ids=torch.tensor(np.asarray(ids)), pixel_values=torch.tensor(pixels))
  if sizes is not None:
    kw["image_sizes"] = torch.tensor(sizes)
  with torch.no_grad():
    return model(**kw).logits.numpy()


@pytest.mark.parametrize("name", ["llava_default", "llava_full_layers"])
def test_llava15_logits_match_transformers(saved, images, name):
  model, d = saved(name)
  lm = jaxsteer.load(str(d))
  assert isinstance(lm, VisionLanguageModel)
  assert lm.config.num_layers == 2 and lm.image_token_id == IMAGE_TOKEN
  n = lm.num_image_tokens()
  assert n == (5 if name == "llava_full_layers" else 4)
  pixels, sizes = lm.preprocess([images["astronaut.png"], images["chelsea.png"]])
  assert sizes is None and pixels.shape == (2, 3, 28, 28)
  # The image features HF computes per image have the length we expand each placeholder to.
  with torch.no_grad():
    feats = model.model.get_image_features(torch.tensor(pixels)).pooler_output
  assert [f.shape[0] for f in feats] == [n, n]
  rng = np.random.default_rng(0)
  ids = np.asarray([_row(rng, 3, [n], 16), _row(rng, 5, [n], 16)])
  ref = _hf_logits(model, ids, pixels)
  out = np.asarray(lm(ids, pixel_values=pixels))
  assert out.shape == ref.shape == (2, 16, 32064)
  np.testing.assert_allclose(out, ref, atol=PARITY_ATOL_F32, rtol=0)


@pytest.fixture(scope="module")
def next_batch(saved, images):
  """LLaVA-NeXT model and a batch: a square, a landscape and a portrait image in two rows."""
  model, d = saved("llava_next")
  lm = jaxsteer.load(str(d))
  landscape = lm.load_image(images["rocket.jpg"])
  portrait = np.asarray(landscape.transpose(2))  # an (H, W, 3) uint8 array, rotated
  ims = [images["astronaut.png"], images["rocket.jpg"], portrait]
  pixels, sizes = lm.preprocess(ims)
  counts = [lm.num_image_tokens(im) for im in ims]
  rng = np.random.default_rng(1)
  ids = np.asarray([_row(rng, 2, counts[:2], 100), _row(rng, 4, counts[2:], 100)])
  return model, lm, ids, pixels, sizes, counts


def test_llava_next_logits_and_token_counts_match_transformers(next_batch):
  model, lm, ids, pixels, sizes, counts = next_batch
  assert sizes.tolist() == [[512, 512], [427, 640], [640, 427]]
  assert pixels.shape == (3, 3, 3, 56, 56)  # padded to the most tiles
  assert [lm.vlm_config.num_tiles(tuple(s)) for s in sizes] == [2, 3, 3]
  # Our count equals the length of HF's packed features for each image (unpad + newlines)...
  with torch.no_grad():
    feats = model.model.get_image_features(torch.tensor(pixels), torch.tensor(sizes)).pooler_output
  assert [f.shape[0] for f in feats] == counts
  # ... which unpadding (columns of the landscape, rows of the portrait image) made differ from
  # the padded grid: 16 base features + rows * (cols + 1 newline).
  assert counts == [16 + 4 * 5, 16 + 4 * 7, 16 + 6 * 5]
  ref = _hf_logits(model, ids, pixels, sizes)
  out = np.asarray(lm(ids, pixel_values=pixels, image_sizes=sizes))
  np.testing.assert_allclose(out, ref, atol=PARITY_ATOL_F32, rtol=0)


def test_second_call_with_new_pixels_compiles_nothing(next_batch):
  _, lm, ids, pixels, sizes, _ = next_batch
  lm(ids, pixel_values=pixels, image_sizes=sizes)
  e0 = lm.embed_inputs(ids, pixels, sizes)
  new = np.random.default_rng(0).normal(size=pixels.shape).astype(np.float32)
  with count_compiles() as c:
    a = lm(ids, pixel_values=new, image_sizes=sizes)
    e = lm.embed_inputs(ids, new, sizes)
    jax.block_until_ready((a, e))
  assert c.count == 0
  # Text positions keep their token embeddings; image positions changed with the pixels.
  img = ids == IMAGE_TOKEN
  np.testing.assert_array_equal(np.asarray(e)[~img], np.asarray(e0)[~img])
  # Image positions changed with the pixels, except the image_newline features (one per row of
  # the unpadded tile grids: 4 + 4 + 6).
  changed = np.abs(np.asarray(e)[img] - np.asarray(e0)[img]).max(axis=-1) > 0
  assert img.sum() == 126 and changed.sum() == 126 - 14
  # The concatenated tiles (4-D) merge exactly like the padded 5-D layout.
  tiles = [lm.vlm_config.num_tiles(tuple(s)) for s in sizes]
  flat = np.concatenate([pixels[i, :t] for i, t in enumerate(tiles)])
  np.testing.assert_allclose(np.asarray(lm.embed_inputs(ids, flat, sizes)), e0, atol=1e-6, rtol=0)


def test_encode_multimodal_matches_hf_processor(saved, images):
  model, d = saved("llava_next")
  lm = jaxsteer.load(str(d))
  cfg = lm.vlm_config
  proc = transformers.LlavaNextProcessor(
    image_processor=lm.image_processor,
    tokenizer=lm.tokenizer.tok,
    patch_size=cfg.vision.patch_size,
    vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    num_additional_image_tokens=1,
  )
  prompt = lm.chat_prompt("What is shown here?")
  assert prompt == "USER: <image>\nWhat is shown here? ASSISTANT:"
  ims = [lm.load_image(images["rocket.jpg"])]
  ref = proc(images=ims, text=prompt, return_tensors="np")
  ids, pixels, sizes = lm.encode_multimodal(prompt, ims)
  assert ids == ref["input_ids"][0].tolist()
  np.testing.assert_array_equal(pixels, ref["pixel_values"])
  np.testing.assert_array_equal(sizes, ref["image_sizes"])
  # Several images: each placeholder becomes its own image's run of image tokens, in order.
  two = [images["astronaut.png"], images["rocket.jpg"]]
  ids, pixels, sizes = lm.encode_multimodal("<image> and <image>?", two)
  runs = [len(r) for r in "".join("i" if t == IMAGE_TOKEN else " " for t in ids).split()]
  assert runs == [lm.num_image_tokens(im) for im in two] == [36, 44]
  assert pixels.shape[0] == 2 and sizes.tolist() == [[512, 512], [427, 640]]


def _greedy_no_cache(lm, ids, pixels, sizes, n):
  """Greedy argmax decoding by full forwards without a cache. The buffer has a fixed length (one
  compiled program): causal attention makes each position blind to the padding after it."""
  buf = np.zeros((1, len(ids) + n), np.int32)
  buf[0, : len(ids)] = ids
  for t in range(len(ids), len(ids) + n):
    logits = lm(buf, pixel_values=pixels, image_sizes=sizes)
    buf[0, t] = int(np.argmax(np.asarray(logits)[0, t - 1]))
  return buf[0, len(ids) :].tolist()


def test_generate_kv_cache_matches_greedy_and_steering_applies(saved, images):
  model, d = saved("llava_next")
  lm = jaxsteer.load(str(d))
  prompt = lm.chat_prompt("Describe the image.")
  ids, pixels, sizes = lm.encode_multimodal(prompt, [images["chelsea.png"]])
  n = 4
  # transformers' greedy generate (its own KV cache) on the unpadded prompt.
  with torch.no_grad():
    ref = model.generate(
      input_ids=torch.tensor([ids]),
      attention_mask=torch.ones(1, len(ids), dtype=torch.long),
      pixel_values=torch.tensor(pixels),
      image_sizes=torch.tensor(sizes),
      max_new_tokens=n,
      min_new_tokens=n,
      do_sample=False,
    )[0, len(ids) :].tolist()
  batch, mask = lm.prepare_batch([ids])  # left-padded to a multiple of 8
  assert batch.shape[1] > len(ids)
  out = lm.generate_ids(
    batch, mask, pixel_values=pixels, image_sizes=sizes, max_new_tokens=n, stop_at_eos=False
  )
  assert out[0].tolist() == ref
  text = lm.generate(prompt, image=images["chelsea.png"], max_new_tokens=n, stop_at_eos=False)
  assert text == lm.decode(ref)
  # Steering interceptors act during VLM generation (prefill on merged embeddings and decode):
  # the cached generation equals greedy decoding by full steered forwards without a cache.
  vec = np.random.default_rng(0).normal(size=lm.config.hidden_size).astype(np.float32)
  steered = jaxsteer.steer(lm, {0: vec}, alpha=8.0)
  assert isinstance(steered, VisionLanguageModel)
  s_ref = _greedy_no_cache(steered, ids, pixels, sizes, n)
  s_out = steered.generate_ids(
    batch, mask, pixel_values=pixels, image_sizes=sizes, max_new_tokens=n, stop_at_eos=False
  )
  assert s_out[0].tolist() == s_ref
  assert s_ref != ref


def test_bad_inputs_raise(saved, images, tmp_path):
  _, d = saved("llava_default")
  lm = jaxsteer.load(str(d))
  bad = tmp_path / "x.png"
  bad.write_bytes(b"this is not a png" * 10)
  with pytest.raises(ValueError, match="cannot decode image"):
    lm.load_image(bad)
  with pytest.raises(ValueError, match="cannot decode image"):
    lm.generate("USER: <image>\nHi ASSISTANT:", image=bad, max_new_tokens=2)
  with pytest.raises(FileNotFoundError, match="image not found"):
    lm.load_image(tmp_path / "missing.png")
  with pytest.raises(ValueError, match="missing image placeholder"):
    lm.generate("USER: Hi ASSISTANT:", image=images["astronaut.png"], max_new_tokens=2)
  with pytest.raises(ValueError, match="more images"):
    lm.encode_multimodal("<image> two?", [images["astronaut.png"], images["chelsea.png"]])
  with pytest.raises(ValueError, match="more image placeholders"):
    lm.encode_multimodal("<image> <image>", [images["astronaut.png"]])
  ids, pixels, _ = lm.encode_multimodal("<image> hi", [images["astronaut.png"]])
  with pytest.raises(ValueError, match="image features and image tokens do not match"):
    lm(np.asarray([ids[:-3]]), pixel_values=pixels)
  with pytest.raises(ValueError, match="uint8"):
    lm.load_image(np.zeros((4, 4, 3), np.float32))


def test_transformers4_layout_and_mesh_load(saved, tmp_path):
  """The llava-hf (transformers 4) tensor names load to the same model, also onto a mesh."""
  from safetensors.torch import save_file

  model, d = saved("llava_default")
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  # transformers 5 in-memory names: model.vision_tower., model.multi_modal_projector.,
  # model.language_model., lm_head.weight.
  assert "model.language_model.embed_tokens.weight" in state and "lm_head.weight" in state
  rename = (
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
  )
  hf4 = {}
  for k, v in state.items():
    for old, new in rename:
      if k.startswith(old):
        k = new + k[len(old) :]
        break
    hf4[k] = v
  dirs = []
  for name, tensors in (("hf5", state), ("hf4", hf4)):
    out = tmp_path / name
    out.mkdir()
    save_file(tensors, out / "model.safetensors")
    (out / "config.json").write_text((d / "config.json").read_text())
    dirs.append(out)
  rng = np.random.default_rng(2)  # shapes of the parity test: its programs are reused
  ids = np.asarray([_row(rng, 3, [4], 16), _row(rng, 5, [4], 16)])
  pixels = rng.normal(size=(2, 3, 28, 28)).astype(np.float32)
  reference = jaxsteer.load(str(d))
  ref = np.asarray(reference(ids, pixel_values=pixels))
  # A preprocessor_config.json in the model directory is used (PIL backend, no torchvision).
  reference.image_processor.save_pretrained(dirs[1])
  hf4_lm = jaxsteer.load(str(dirs[1]))
  assert type(hf4_lm.image_processor).__name__ == "CLIPImageProcessorPil"
  image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
  np.testing.assert_array_equal(hf4_lm.preprocess(image)[0], reference.preprocess(image)[0])
  for other in dirs:
    np.testing.assert_array_equal(
      np.asarray(jaxsteer.load(str(other))(ids, pixel_values=pixels)), ref
    )
  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharded = jaxsteer.load(str(d), mesh=mesh)
  emb = sharded.params["language_model"]["embed"]["embedding"]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  fc1 = sharded.params["vision_tower"]["encoder_layers_0"]["mlp"]["fc1"]["kernel"]
  assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  out = np.asarray(sharded(ids, pixel_values=pixels))
  np.testing.assert_allclose(out, ref, atol=PARITY_ATOL_F32, rtol=0)


def test_config_parsing_old_names_and_defaults():
  """llava-hf configs (transformers 4) name ``image_token_index`` and leave defaults out."""
  hf = {
    "model_type": "llava",
    "image_token_index": 32000,
    "text_config": {"model_type": "llama", "vocab_size": 32064},
    "vision_config": {"model_type": "clip_vision_model", "projection_dim": 768},
  }
  cfg = LlavaConfig.from_hf(hf)
  assert cfg.image_token_id == 32000 and cfg.text.num_layers == 32
  assert cfg.vision.image_size == 336 and cfg.num_image_tokens() == 576
  hf = dict(hf, model_type="llava_next", vision_feature_layer=[-2, -5])
  cfg = LlavaConfig.from_hf(hf)
  assert cfg.feature_layers == (-2, -5) and (672, 672) in cfg.image_grid_pinpoints
  hash(cfg)  # a static jit argument
  with pytest.raises(ValueError, match="full"):
    LlavaConfig.from_hf(dict(hf, vision_feature_select_strategy="full"))
  with pytest.raises(ValueError, match="vocabulary"):
    LlavaConfig.from_hf(dict(hf, image_token_index=40000))


def test_chat_template_from_tokenizer(saved):
  _, d = saved("llava_default")
  lm = jaxsteer.load(str(d))
  assert lm.chat_prompt("Hi?", with_image=False) == "USER: Hi? ASSISTANT:"
  tmpl = (
    "{% for m in messages %}[{{ m['role'] }}]"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
  )
  templated = lm.replace(chat_template=tmpl)
  assert isinstance(templated, VisionLanguageModel)
  assert templated.chat_prompt("Hi?") == "[user]<image>Hi?[assistant]"
  assert lm.vlm_config.image_grid_pinpoints is None  # LLaVA-1.5


def test_init_random_builds_every_parameter(saved):
  from jaxsteer._src.models import llava

  _, d = saved("llava_default")
  cfg = LlavaConfig.from_json(d / "config.json")
  lm = llava.init_random(cfg, seed=1)
  loaded = jaxsteer.load(str(d))
  shapes = jax.tree.map(np.shape, lm.params)
  assert shapes == jax.tree.map(np.shape, loaded.params)
  rng = np.random.default_rng(3)
  ids = np.asarray([_row(rng, 3, [4], 16), _row(rng, 5, [4], 16)])
  pixels = rng.normal(size=(2, 3, 28, 28)).astype(np.float32)
  logits, hidden = lm(ids, pixel_values=pixels, return_hidden=True)
  assert logits.shape == (2, 16, 32064) and len(hidden) == 2
  assert np.isfinite(np.asarray(logits)).all()


def test_bfloat16_load_matches_float32(saved, images):
  """A bfloat16 load computes in bfloat16; its logits agree with float32 to bfloat16 precision."""
  from tolerances import tol

  _, d = saved("llava_default")
  lm32 = jaxsteer.load(str(d))
  lm16 = jaxsteer.load(str(d), dtype="bfloat16")
  assert lm16.dtype == jax.numpy.bfloat16
  assert all(a.dtype == jax.numpy.bfloat16 for a in jax.tree.leaves(lm16.params))
  pixels, _ = lm32.preprocess([images["chelsea.png"]])
  rng = np.random.default_rng(1)
  ids = np.asarray([_row(rng, 4, [lm32.num_image_tokens()], 16)])
  a = np.asarray(lm32(ids, pixel_values=pixels))
  b = np.asarray(lm16(ids, pixel_values=pixels), np.float32)
  rtol, atol = tol("bfloat16")
  np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)
