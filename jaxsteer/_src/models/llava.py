"""LLaVA vision-language models in Flax: LLaVA-1.5 and LLaVA-NeXT (1.6) any-resolution tiling.

LLaVA (Liu et al., 2023, "Visual Instruction Tuning"; LLaVA-1.5: "Improved Baselines with Visual
Instruction Tuning") feeds the hidden states of a CLIP ViT layer, passed through a two-layer MLP
projector, into a causal LM at the positions of the image tokens. LLaVA-NeXT (Liu et al., 2024,
"LLaVA-NeXT: Improved reasoning, OCR, and world knowledge") tiles a high-resolution image on the
best grid of ``image_grid_pinpoints``, encodes a downscaled base image plus every tile, removes
the padding the resize added ("spatial unpad") and ends each feature row with a learned
``image_newline`` vector. Both follow transformers' ``LlavaForConditionalGeneration`` and
``LlavaNextForConditionalGeneration`` exactly (logits within 1e-4 in float32; see
tests/jaxsteer/test_llava.py).

  >>> import jaxsteer
  >>> lm = jaxsteer.load("llava-hf/llava-1.5-7b-hf")  # doctest: +SKIP
  >>> prompt = lm.chat_prompt("What is in the picture?")  # "USER: <image>\\n... ASSISTANT:"
  >>> lm.generate(prompt, image="astronaut.png", max_new_tokens=32)  # doctest: +SKIP
  >>> ids, pixels, sizes = lm.encode_multimodal(prompt, ["astronaut.png"])  # doctest: +SKIP
  >>> logits = lm(ids, pixel_values=pixels, image_sizes=sizes)  # doctest: +SKIP
  >>> embeds = lm.embed_inputs(ids, pixels, sizes)  # (1, T, D): attribution's input space

The Flax module ``Llava`` has the submodules ``vision_tower`` (``VisionTower``),
``multi_modal_projector`` and ``language_model`` (the text ``CausalLM``, unchanged: its decoder
layers are the ``DecoderLayer`` modules ``layers_i``, so steering and capture interceptors work
as for a language model), plus the ``image_newline`` parameter for NeXT.

Static shapes: the number of tiles, the unpadded feature grid and hence the number of image tokens
of a LLaVA-NeXT image depend on its original size, so ``image_sizes`` are static Python ints (a
jit static argument): a new image size compiles a new program, new pixels of the same sizes do not.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxsteer._src.images import as_image_list, load_image
from jaxsteer._src.models import loading, registry
from jaxsteer._src.models.config import ModelConfig, config_from_json
from jaxsteer._src.models.lm import (
  LanguageModel,
  _apply,
  _strip,
)
from jaxsteer._src.models.modules import CausalLM
from jaxsteer._src.models.safetensors_io import SafetensorsCheckpoint
from jaxsteer._src.models.vision import VisionConfig, VisionTower, activation

Dtype = Any

LLAVA_MODEL_TYPES = ("llava", "llava_next")
FEATURE_SELECT_STRATEGIES = ("default", "full")
DEFAULT_IMAGE_GRID_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

# transformers' text-config defaults, which the published llava-hf configs leave out.
_TEXT_DEFAULTS = {
  "llama": dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
  ),
  "mistral": dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=4096 * 32,
    rms_norm_eps=1e-6,
    sliding_window=4096,
    bos_token_id=1,
    eos_token_id=2,
  ),
  "qwen2": dict(
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=22016,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
  ),
}


# ------------------------------------------------------------------------------------------------
# Any-resolution geometry (pure Python on static sizes; transformers' formulas).


def select_best_resolution(
  original_size: Sequence[int], possible_resolutions: Sequence[Sequence[int]]
) -> tuple[int, int]:
  """The ``(height, width)`` of ``possible_resolutions`` that keeps most of the image, least waste.

  Args:
    original_size: ``(height, width)`` of the image.
    possible_resolutions: ``[(height, width), ...]`` (``image_grid_pinpoints``).
  """
  oh, ow = (int(v) for v in original_size)
  best, best_eff, best_waste = None, 0, float("inf")
  for h, w in possible_resolutions:
    scale = min(w / ow, h / oh)
    dw, dh = int(ow * scale), int(oh * scale)
    eff = min(dw * dh, ow * oh)
    waste = w * h - eff
    if eff > best_eff or (eff == best_eff and waste < best_waste):
      best, best_eff, best_waste = (int(h), int(w)), eff, waste
  if best is None:
    raise ValueError(
      f"no resolution in {possible_resolutions} fits an image of size {original_size}"
    )
  return best


def anyres_grid_shape(image_size, grid_pinpoints, tile_size: int) -> tuple[int, int]:
  """``(rows, cols)`` of tiles of an image of ``(height, width)`` ``image_size``."""
  h, w = select_best_resolution(image_size, grid_pinpoints)
  return h // tile_size, w // tile_size


def anyres_num_tiles(image_size, grid_pinpoints, tile_size: int) -> int:
  """Number of vision-tower inputs of one image: the tiles plus the base image."""
  h, w = select_best_resolution(image_size, grid_pinpoints)
  return -(-h // tile_size) * -(-w // tile_size) + 1


def unpad_slices(original_size, current_size) -> tuple[slice, slice]:
  """Row and column slices that remove the padding of a resized image (HF ``unpad_image``)."""
  oh, ow = (int(v) for v in original_size)
  ch, cw = current_size
  if ow / oh > cw / ch:
    new_h = int(round(oh * (cw / ow), 7))
    pad = (ch - new_h) // 2
    return slice(pad, ch - pad), slice(0, cw)
  new_w = int(round(ow * (ch / oh), 7))
  pad = (cw - new_w) // 2
  return slice(0, ch), slice(pad, cw - pad)


def _static_sizes(image_sizes) -> tuple[tuple[int, int], ...] | None:
  """``image_sizes`` as a hashable tuple of ``(height, width)`` Python ints."""
  if image_sizes is None:
    return None
  if isinstance(image_sizes, jax.core.Tracer):
    raise ValueError(
      "image_sizes must be static (numpy array, list or tuple of (height, width)), not traced: "
      "they fix the LLaVA-NeXT feature shapes"
    )
  arr = np.asarray(image_sizes)
  if arr.ndim == 1 and arr.shape == (2,):
    arr = arr[None]
  if arr.ndim != 2 or arr.shape[1] != 2:
    raise ValueError(f"image_sizes must have shape (num_images, 2), got {arr.shape}")
  return tuple((int(h), int(w)) for h, w in arr)


# ------------------------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
  """Static description of a LLaVA(-NeXT) model (hashable, a jit static argument).

  Attributes:
    text: the language model's ``ModelConfig``.
    vision: the CLIP tower's ``VisionConfig``.
    model_type: ``"llava"`` (1.5) or ``"llava_next"`` (1.6, any-resolution tiling).
    image_token_id: id of the image placeholder token (HF ``image_token_id``, formerly
      ``image_token_index``).
    projector_hidden_act: activation between the projector's two linear layers.
    vision_feature_layer: index into the tower's hidden states (entry 0: embeddings), or a tuple
      of indices whose features are concatenated.
    vision_feature_select_strategy: ``"default"`` drops the CLS token, ``"full"`` keeps it
      (LLaVA-1.5 only; transformers' NeXT cannot unpad CLS features).
    image_grid_pinpoints: NeXT's candidate ``(height, width)`` resolutions.
    multimodal_projector_bias: biases on the projector's linear layers.
    image_seq_length: HF's nominal image length (informational).
  """

  text: ModelConfig
  vision: VisionConfig
  model_type: str = "llava"
  image_token_id: int = 32000
  projector_hidden_act: str = "gelu"
  vision_feature_layer: int | tuple[int, ...] = -2
  vision_feature_select_strategy: str = "default"
  image_grid_pinpoints: tuple[tuple[int, int], ...] | None = None
  multimodal_projector_bias: bool = True
  image_seq_length: int = 576

  def __post_init__(self):
    if self.model_type not in LLAVA_MODEL_TYPES:
      raise ValueError(
        f"unknown model_type {self.model_type!r}; supported: {', '.join(LLAVA_MODEL_TYPES)}"
      )
    if self.vision_feature_select_strategy not in FEATURE_SELECT_STRATEGIES:
      raise ValueError(
        f"unknown vision_feature_select_strategy {self.vision_feature_select_strategy!r}; "
        f"supported: {', '.join(FEATURE_SELECT_STRATEGIES)}"
      )
    if self.is_next and self.vision_feature_select_strategy == "full":
      raise ValueError(
        "LLaVA-NeXT with vision_feature_select_strategy='full' is not supported: the CLS token "
        "breaks the tile grid (transformers reshapes it into garbage)"
      )
    if self.is_next and not self.image_grid_pinpoints:
      raise ValueError("LLaVA-NeXT needs image_grid_pinpoints")
    n = self.vision.num_layers + 1
    for layer in self.feature_layers:
      if not -n <= layer < n:
        raise ValueError(
          f"vision_feature_layer {layer} is out of range for a tower with {n} hidden states"
        )
    if not 0 <= self.image_token_id < self.text.vocab_size:
      raise ValueError(
        f"image_token_id {self.image_token_id} lies outside the vocabulary "
        f"[0, {self.text.vocab_size})"
      )
    activation(self.projector_hidden_act)

  @property
  def is_next(self) -> bool:
    return self.model_type == "llava_next"

  @property
  def feature_layers(self) -> tuple[int, ...]:
    if isinstance(self.vision_feature_layer, int):
      return (self.vision_feature_layer,)
    return tuple(self.vision_feature_layer)

  @property
  def tokens_per_tile(self) -> int:
    """Features per vision-tower input: its patches (+1 CLS with ``"full"``)."""
    return self.vision.num_patches + (self.vision_feature_select_strategy == "full")

  def num_tiles(self, image_size=None) -> int:
    """Vision-tower inputs of one image (1 for LLaVA-1.5; tiles + base for NeXT)."""
    if not self.is_next:
      return 1
    if image_size is None:
      raise ValueError("LLaVA-NeXT needs the image size (height, width) to count its tiles")
    return anyres_num_tiles(image_size, self.image_grid_pinpoints, self.vision.image_size)

  def unpadded_grid(self, image_size) -> tuple[int, int]:
    """NeXT: ``(rows, cols)`` of the tile features after spatial unpadding."""
    rows, cols = anyres_grid_shape(image_size, self.image_grid_pinpoints, self.vision.image_size)
    side = self.vision.patches_per_side
    rs, cs = unpad_slices(image_size, (rows * side, cols * side))
    return rs.stop - rs.start, cs.stop - cs.start

  def num_image_tokens(self, image_size=None) -> int:
    """Image tokens one image occupies in the sequence.

    LLaVA-1.5: ``patches`` (+1 with ``"full"``). NeXT: the base image's patches plus the unpadded
    tile grid with one ``image_newline`` per row (transformers' processor formula).

    Args:
      image_size: ``(height, width)`` of the original image (needed for NeXT).
    """
    if not self.is_next:
      return self.tokens_per_tile
    h, w = self.unpadded_grid(image_size)
    return self.vision.num_patches + h * (w + 1)

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> LlavaConfig:
    """Builds a config from a HF LLaVA / LLaVA-NeXT ``config.json`` dict (transformers 4 or 5)."""
    model_type = hf.get("model_type")
    if model_type not in LLAVA_MODEL_TYPES:
      raise ValueError(
        f"model_type={model_type!r} is not a LLaVA model; supported: {', '.join(LLAVA_MODEL_TYPES)}"
      )
    text = {k: v for k, v in dict(hf.get("text_config") or {}).items() if v is not None}
    text.setdefault("model_type", "llama")
    if text["model_type"] == "gpt2":
      raise ValueError("LLaVA with a GPT-2 text model is not supported")
    text = {**_TEXT_DEFAULTS.get(text["model_type"], {}), **text}
    if "tie_word_embeddings" in hf:  # transformers ties on the top-level flag
      text["tie_word_embeddings"] = hf["tie_word_embeddings"]
    text_cfg = ModelConfig.from_hf(text)
    vision = dict(hf.get("vision_config") or {})
    layer = hf.get("vision_feature_layer", -2)
    layer = int(layer) if isinstance(layer, int) else tuple(int(v) for v in layer)
    pins = hf.get("image_grid_pinpoints")
    if model_type == "llava_next" and pins is None:
      pins = DEFAULT_IMAGE_GRID_PINPOINTS
    pins = None if pins is None else tuple((int(h), int(w)) for h, w in pins)
    token = hf.get("image_token_id", hf.get("image_token_index", 32000))
    return cls(
      text=text_cfg,
      vision=VisionConfig.from_hf(vision),
      model_type=model_type,
      image_token_id=int(token),
      projector_hidden_act=hf.get("projector_hidden_act", "gelu"),
      vision_feature_layer=layer,
      vision_feature_select_strategy=hf.get("vision_feature_select_strategy", "default"),
      image_grid_pinpoints=pins if model_type == "llava_next" else None,
      multimodal_projector_bias=bool(hf.get("multimodal_projector_bias", True)),
      image_seq_length=int(hf.get("image_seq_length", 576)),
    )

  @classmethod
  def from_json(cls, path: str | pathlib.Path) -> LlavaConfig:
    return config_from_json(cls, path)


# ------------------------------------------------------------------------------------------------
# Flax modules.


class MultiModalProjector(nn.Module):
  """``linear_2(act(linear_1(features)))``: vision width (times feature layers) -> text width."""

  config: LlavaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(
      use_bias=cfg.multimodal_projector_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.normal(0.02),
    )
    x = nn.Dense(cfg.text.hidden_size, name="linear_1", **kw)(x)
    x = activation(cfg.projector_hidden_act)(x)
    return nn.Dense(cfg.text.hidden_size, name="linear_2", **kw)(x)


class Llava(nn.Module):
  """LLaVA / LLaVA-NeXT: CLIP tower, projector and the text ``CausalLM``.

  ``__call__`` takes ``CausalLM``'s arguments plus ``pixel_values`` and ``image_sizes``. Pixel
  values hold the images of the whole batch in order (LLaVA-1.5: (N, 3, S, S); NeXT: (N, P, 3, S,
  S) padded to P tiles, or the (sum of tiles, 3, S, S) concatenation); their features fill the
  positions where ``input_ids == image_token_id`` in row-major order over the batch, like
  transformers' ``masked_scatter``. ``image_sizes`` (N, 2) are the original ``(height, width)``
  (NeXT only) and must be static.
  """

  config: LlavaConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.vision_tower = VisionTower(cfg.vision, **kw)
    self.multi_modal_projector = MultiModalProjector(cfg, **kw)
    self.language_model = CausalLM(cfg.text, **kw)
    if cfg.is_next:
      d = cfg.text.hidden_size
      self.image_newline = self.param(
        "image_newline", nn.initializers.normal(d**-0.5), (d,), self.param_dtype
      )

  def embed_tokens(self, input_ids):
    """Text token embeddings (B, T, D) (image tokens get their own, unused, embedding)."""
    return self.language_model.embed_tokens(input_ids)

  def mean_token_embedding(self):
    return self.language_model.mean_token_embedding()

  def _select(self, hidden):
    cfg = self.config
    feats = [hidden[i] for i in cfg.feature_layers]
    if cfg.vision_feature_select_strategy == "default":
      feats = [f[:, 1:] for f in feats]
    return jnp.concatenate(feats, axis=-1) if len(feats) > 1 else feats[0]

  def image_features(self, pixel_values, image_sizes=None):
    """Projected image features of all images, concatenated in order: (num_features, D)."""
    cfg = self.config
    if not cfg.is_next:
      if pixel_values.ndim == 5 and pixel_values.shape[1] == 1:
        pixel_values = pixel_values[:, 0]
      if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (N, 3, H, W), got shape {pixel_values.shape}")
      feats = self.multi_modal_projector(self._select(self.vision_tower(pixel_values)))
      return feats.reshape(-1, feats.shape[-1])
    sizes = _static_sizes(image_sizes)
    if sizes is None:
      raise ValueError("LLaVA-NeXT needs image_sizes (the original (height, width) of each image)")
    tiles = [cfg.num_tiles(s) for s in sizes]
    if pixel_values.ndim == 5:
      if pixel_values.shape[0] != len(sizes):
        raise ValueError(
          f"{pixel_values.shape[0]} images in pixel_values but {len(sizes)} image_sizes"
        )
      if max(tiles) > pixel_values.shape[1]:
        raise ValueError(
          f"pixel_values hold {pixel_values.shape[1]} tiles per image but the image sizes need "
          f"up to {max(tiles)}"
        )
      pixel_values = jnp.concatenate([pixel_values[i, :n] for i, n in enumerate(tiles)])
    elif pixel_values.ndim != 4 or pixel_values.shape[0] != sum(tiles):
      raise ValueError(
        f"pixel_values of shape {pixel_values.shape} do not hold the {sum(tiles)} tiles that "
        f"image_sizes {sizes} imply"
      )
    feats = self.multi_modal_projector(self._select(self.vision_tower(pixel_values)))
    side = cfg.vision.patches_per_side
    d = feats.shape[-1]
    newline = self.image_newline.astype(feats.dtype)
    out, start = [], 0
    for size, n in zip(sizes, tiles):
      f = feats[start : start + n]
      start += n
      rows, cols = anyres_grid_shape(size, cfg.image_grid_pinpoints, cfg.vision.image_size)
      grid = f[1:].reshape(rows, cols, side, side, d).transpose(0, 2, 1, 3, 4)
      grid = grid.reshape(rows * side, cols * side, d)
      rs, cs = unpad_slices(size, grid.shape[:2])
      grid = grid[rs, cs]
      nl = jnp.broadcast_to(newline, (grid.shape[0], 1, d))
      grid = jnp.concatenate([grid, nl], axis=1).reshape(-1, d)
      out.append(jnp.concatenate([f[0], grid]))
    return jnp.concatenate(out)

  def embed_multimodal(self, input_ids, pixel_values, image_sizes=None):
    """The decoder's input (B, T, D): token embeddings with image features at image tokens.

    With concrete ``input_ids`` a mismatch between the number of image tokens and of image
    features raises ``ValueError``; under ``jit`` the ids are traced and the check is left to the
    caller (``VisionLanguageModel`` checks before it calls its jitted functions).
    """
    x = self.embed_tokens(input_ids)
    if pixel_values is None:
      return x
    feats = self.image_features(pixel_values, image_sizes).astype(x.dtype)
    mask = input_ids == self.config.image_token_id
    if not isinstance(input_ids, jax.core.Tracer):
      check_image_tokens(int(np.asarray(mask).sum()), feats.shape[0], self.config.image_token_id)
    flat = mask.reshape(-1)
    idx = jnp.clip(jnp.cumsum(flat) - 1, 0, feats.shape[0] - 1)
    gathered = feats[idx].reshape(x.shape)
    return jnp.where(mask[..., None], gathered, x)

  def __call__(
    self,
    input_ids=None,
    *,
    inputs_embeds=None,
    attention_mask=None,
    positions=None,
    slots=None,
    decode: bool = False,
    return_hidden: bool = False,
    pixel_values=None,
    image_sizes=None,
  ):
    if pixel_values is not None:
      if input_ids is None or inputs_embeds is not None:
        raise ValueError(
          "pixel_values need input_ids (to find the image tokens), not inputs_embeds"
        )
      inputs_embeds = self.embed_multimodal(input_ids, pixel_values, image_sizes)
      input_ids = None
    return self.language_model(
      input_ids,
      inputs_embeds=inputs_embeds,
      attention_mask=attention_mask,
      positions=positions,
      slots=slots,
      decode=decode,
      return_hidden=return_hidden,
    )

  def init_all(self, input_ids, pixel_values):
    """Touches every submodule (for ``init``): tower, projector and language model."""
    self.multi_modal_projector(self._select(self.vision_tower(pixel_values)))
    if self.config.is_next:
      _ = self.image_newline
    return self.language_model(input_ids)


def check_image_tokens(n_tokens: int, n_features: int, image_token_id: int) -> None:
  """``ValueError`` unless the image-token count equals the number of image features."""
  if n_tokens != n_features:
    raise ValueError(
      f"image features and image tokens do not match: the input has {n_tokens} image tokens "
      f"(id {image_token_id}) but the images give {n_features} features; expand each image "
      "placeholder to its image's token count (lm.encode_multimodal does)"
    )


def abstract_params(module: Llava):
  """``ShapeDtypeStruct`` tree of every parameter of ``module`` (nothing is computed)."""
  cfg = module.config
  s = cfg.vision.image_size
  ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  pixels = jax.ShapeDtypeStruct((1, cfg.vision.num_channels, s, s), jnp.float32)
  return jax.eval_shape(
    lambda i, p: module.init(jax.random.PRNGKey(0), i, p, method=Llava.init_all)["params"],
    ids,
    pixels,
  )


def init_params(module: Llava, seed: int = 0):
  """Random parameters for every submodule of ``module`` (for tests and examples).

  Drawn with numpy, which avoids compiling Flax's initialisers (slow on CPU): norm scales are
  ones, biases zeros, every other array ``N(0, 0.02)``.
  """
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(abstract_params(module))
  out = {}
  for path, s in flat.items():
    if path[-1] == "scale":
      v = np.ones(s.shape)
    elif path[-1] == "bias":
      v = np.zeros(s.shape)
    else:
      v = rng.normal(0.0, 0.02, s.shape)
    out[path] = jnp.asarray(v, s.dtype)
  return traverse_util.unflatten_dict(out)


def expected_shapes(cfg: LlavaConfig) -> dict[str, tuple[int, ...]]:
  """Flax parameter shapes of a LLaVA config (``/``-joined paths), without initialising."""
  flat = traverse_util.flatten_dict(abstract_params(Llava(cfg)), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


# ------------------------------------------------------------------------------------------------
# HF checkpoint layout -> Flax layout.


def llava_weights(cfg: LlavaConfig, names=None) -> registry.WeightMap:
  """HF <-> ``Llava`` entries; ``names`` (the checkpoint's) pick among the naming variants.

  Accepts transformers 5 names (``model.vision_tower.``, ``model.multi_modal_projector.``,
  ``model.language_model.``, ``lm_head.weight``), the transformers-4 names of the published
  llava-hf checkpoints (``vision_tower.vision_model.``, ``multi_modal_projector.``,
  ``language_model.model.``, ``language_model.lm_head.weight``) and mixtures of the two;
  ``names=None`` gives the names transformers 5's ``save_pretrained`` writes (the llava-hf
  layout). The vision tower's ``post_layernorm`` is unused by LLaVA and not mapped.
  """
  T = registry.Tensor
  text_prefix = registry.pick_prefix(
    names,
    ("language_model.model.", "model.language_model.", "model.language_model.model."),
    "embed_tokens.weight",
    "language model tensors",
  )
  lm_head = "language_model.lm_head.weight"
  if names is not None:
    lm_head = next(
      (n for n in ("lm_head.weight", "language_model.lm_head.weight") if n in names),
      "lm_head.weight",
    )
  text = registry.get(cfg.text.arch).weights(cfg.text, names, prefix=text_prefix, lm_head=lm_head)
  out = [dataclasses.replace(e, flax=tuple(f"language_model/{p}" for p in e.flax)) for e in text]
  v = registry.pick_prefix(
    names,
    (
      "vision_tower.",
      "vision_tower.vision_model.",
      "model.vision_tower.vision_model.",
      "model.vision_tower.",
    ),
    "embeddings.class_embedding",
    "vision tower tensors",
  )
  q = "vision_tower/"
  out += [
    T(v + "embeddings.class_embedding", (q + "embeddings/class_embedding",)),
    T(
      v + "embeddings.patch_embedding.weight", (q + "embeddings/patch_embedding/kernel",), "conv2d"
    ),
    T(v + "embeddings.position_embedding.weight", (q + "embeddings/position_embedding/embedding",)),
    T(v + "pre_layrnorm.weight", (q + "pre_layrnorm/scale",)),
    T(v + "pre_layrnorm.bias", (q + "pre_layrnorm/bias",)),
  ]
  for i in range(cfg.vision.num_layers):
    p, r = f"{v}encoder.layers.{i}.", f"{q}encoder_layers_{i}/"
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      out.append(T(f"{p}self_attn.{proj}.weight", (f"{r}self_attn/{proj}/kernel",), "T"))
      out.append(T(f"{p}self_attn.{proj}.bias", (f"{r}self_attn/{proj}/bias",)))
    for fc in ("fc1", "fc2"):
      out.append(T(f"{p}mlp.{fc}.weight", (f"{r}mlp/{fc}/kernel",), "T"))
      out.append(T(f"{p}mlp.{fc}.bias", (f"{r}mlp/{fc}/bias",)))
    for ln in ("layer_norm1", "layer_norm2"):
      out.append(T(f"{p}{ln}.weight", (f"{r}{ln}/scale",)))
      out.append(T(f"{p}{ln}.bias", (f"{r}{ln}/bias",)))
  m = registry.pick_prefix(
    names,
    ("multi_modal_projector.", "model.multi_modal_projector."),
    "linear_1.weight",
    "multimodal projector tensors",
  )
  for lin in ("linear_1", "linear_2"):
    out.append(T(f"{m}{lin}.weight", (f"multi_modal_projector/{lin}/kernel",), "T"))
    if cfg.multimodal_projector_bias:
      out.append(T(f"{m}{lin}.bias", (f"multi_modal_projector/{lin}/bias",)))
  if cfg.is_next:
    name = registry.pick_prefix(names, ("", "model."), "image_newline", "image_newline tensor")
    out.append(T(name + "image_newline", ("image_newline",)))
  return tuple(out)


def llava_arrays(ckpt: SafetensorsCheckpoint, cfg: LlavaConfig) -> dict[str, np.ndarray]:
  """Maps a LLaVA safetensors checkpoint to ``Llava``'s parameter paths (lazy numpy views)."""
  out = registry.hf_to_flax(llava_weights(cfg, frozenset(ckpt.keys())), ckpt)
  loading._check_shapes(out, cfg, want=expected_shapes(cfg))
  return out


# ------------------------------------------------------------------------------------------------
# Image preprocessing.


def make_image_processor(cfg: LlavaConfig, directory: str | pathlib.Path | None = None):
  """transformers' image processor (PIL backend) for ``cfg``.

  ``preprocessor_config.json`` in ``directory`` wins; otherwise ``CLIPImageProcessorPil``
  (LLaVA-1.5) or ``LlavaNextImageProcessorPil`` (NeXT) at the tower's resolution with CLIP's
  normalisation.
  """
  if directory is not None and (pathlib.Path(directory) / "preprocessor_config.json").is_file():
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(directory), backend="pil")
  s = cfg.vision.image_size
  kw = dict(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
  if cfg.is_next:
    from transformers.models.llava_next.image_processing_pil_llava_next import (
      LlavaNextImageProcessorPil,
    )

    return LlavaNextImageProcessorPil(
      image_grid_pinpoints=[list(p) for p in cfg.image_grid_pinpoints], **kw
    )
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

  return CLIPImageProcessorPil(**kw)


# ------------------------------------------------------------------------------------------------
# Jitted entry points.


@functools.partial(jax.jit, static_argnames=("module", "factory", "image_sizes", "return_hidden"))
def _vlm_forward(
  module, factory, params, args, input_ids, attention_mask, pixel_values, image_sizes, return_hidden
):
  return _apply(
    module,
    factory,
    params,
    args,
    input_ids,
    attention_mask=attention_mask,
    pixel_values=pixel_values,
    image_sizes=image_sizes,
    return_hidden=return_hidden,
  )


@functools.partial(jax.jit, static_argnames=("module", "image_sizes"))
def _vlm_embed(module, params, input_ids, pixel_values, image_sizes):
  return module.apply(
    {"params": params}, input_ids, pixel_values, image_sizes, method=Llava.embed_multimodal
  )


# ------------------------------------------------------------------------------------------------
# The model object.


class VisionLanguageModel(LanguageModel):
  """A LLaVA(-NeXT) model: ``Llava`` module, parameters, tokenizer and image processor.

  Everything a ``LanguageModel`` offers works on the text path (``lm.config`` is the text
  ``ModelConfig``); the methods below add images.

  Attributes:
    module: the ``Llava`` Linen module.
    vlm_config: the full ``LlavaConfig``.
    image_token_id: id of the image token.
    image_placeholder: the text that marks an image in a prompt (``"<image>"``).
    image_processor: transformers' image processor (created on first use).
  """

  def __init__(
    self,
    module,
    params,
    config=None,
    tokenizer=None,
    mesh=None,
    intercept=None,
    source=None,
    *,
    vlm_config: LlavaConfig | None = None,
    image_processor=None,
    processor_dir: str | pathlib.Path | None = None,
    image_placeholder: str = "<image>",
    chat_template: str | None = None,
  ):
    vlm_config = module.config if vlm_config is None else vlm_config
    config = vlm_config.text if config is None else config
    super().__init__(module, params, config, tokenizer, mesh, intercept, source)
    self.vlm_config = vlm_config
    self._image_processor = image_processor
    self.processor_dir = processor_dir
    self.image_placeholder = image_placeholder
    self.chat_template = chat_template

  def _fields(self) -> dict[str, Any]:
    return dict(
      super()._fields(),
      vlm_config=self.vlm_config,
      image_processor=self._image_processor,
      processor_dir=self.processor_dir,
      image_placeholder=self.image_placeholder,
      chat_template=self.chat_template,
    )

  @property
  def image_token_id(self) -> int:
    return self.vlm_config.image_token_id

  @property
  def image_processor(self):
    if self._image_processor is None:
      self._image_processor = make_image_processor(self.vlm_config, self.processor_dir)
    return self._image_processor

  # -- images --------------------------------------------------------------------------------------
  def load_image(self, image):
    """An RGB ``PIL.Image`` from a path, a PIL image or an (H, W, 3) uint8 array.

    Raises:
      FileNotFoundError: a path that does not exist.
      ValueError: ``"cannot decode image <path>: ..."`` for a file PIL cannot read.
    """
    return load_image(image)

  def preprocess(self, images) -> tuple[np.ndarray, np.ndarray | None]:
    """``(pixel_values, image_sizes)`` of images (paths, PIL images or arrays).

    ``image_sizes`` (N, 2) are the original ``(height, width)`` (NeXT; ``None`` for LLaVA-1.5).
    """
    pils = [self.load_image(im) for im in as_image_list(images)]
    if not pils:
      raise ValueError("no images to preprocess")
    out = self.image_processor(pils, return_tensors="np")
    pixels = np.asarray(out["pixel_values"], np.float32)
    sizes = None
    if self.vlm_config.is_next:
      sizes = np.asarray(out["image_sizes"], np.int64).reshape(-1, 2)
    return pixels, sizes

  def num_image_tokens(self, image=None) -> int:
    """Image tokens one image occupies (NeXT: depends on the image's size).

    Args:
      image: an image (path, PIL image, array) or its ``(height, width)``; LLaVA-1.5 ignores it.
    """
    if not self.vlm_config.is_next:
      return self.vlm_config.num_image_tokens()
    if image is None:
      raise ValueError("LLaVA-NeXT: the number of image tokens depends on the image; pass it")
    if (
      isinstance(image, tuple | list)
      and len(image) == 2
      and all(isinstance(v, int | np.integer) for v in image)
    ):
      size = image
    else:
      im = self.load_image(image)
      size = (im.height, im.width)
    return self.vlm_config.num_image_tokens(size)

  def _features_count(self, pixel_values, sizes) -> int:
    cfg = self.vlm_config
    if not cfg.is_next:
      n = pixel_values.shape[0]
      return n * cfg.num_image_tokens()
    if sizes is None:
      raise ValueError("LLaVA-NeXT needs image_sizes (the original (height, width) of each image)")
    return sum(cfg.num_image_tokens(s) for s in sizes)

  def _prepare_images(self, ids, pixel_values, image_sizes):
    sizes = _static_sizes(image_sizes) if self.vlm_config.is_next else None
    pixels = jnp.asarray(pixel_values, jnp.float32)
    if not isinstance(ids, jax.core.Tracer):
      n_tok = int((np.asarray(ids) == self.image_token_id).sum())
      check_image_tokens(n_tok, self._features_count(pixels, sizes), self.image_token_id)
    return pixels, sizes

  # -- text ----------------------------------------------------------------------------------------
  def _bos_text(self) -> str | None:
    tok = getattr(self.tokenizer, "tok", None)
    return getattr(tok, "bos_token", None) if tok is not None else None

  def encode_multimodal(
    self, text: str, images=(), add_bos: bool = True
  ) -> tuple[list[int], np.ndarray | None, np.ndarray | None]:
    """Tokenizes a prompt with images: each placeholder becomes its image's image tokens.

    Args:
      text: the prompt, with ``lm.image_placeholder`` once per image (in order).
      images: paths, PIL images or arrays (one per placeholder), or a single image.
      add_bos: prepend BOS.

    Returns:
      ``(ids, pixel_values, image_sizes)``; ``pixel_values`` / ``image_sizes`` are ``None``
      without images (``image_sizes`` is ``None`` for LLaVA-1.5).

    Raises:
      ValueError: images but no placeholder ("missing image placeholder"), or more images than
        placeholders, or more placeholders than images.
    """
    images = as_image_list(images)
    ph = self.image_placeholder
    n_ph = text.count(ph)
    if images and n_ph == 0:
      raise ValueError(
        f"missing image placeholder: {len(images)} image(s) given but the text has no {ph!r}; "
        f"put one {ph!r} where each image goes (lm.chat_prompt does)"
      )
    if len(images) > n_ph:
      raise ValueError(
        f"more images ({len(images)}) than image placeholders {ph!r} ({n_ph}) in the text"
      )
    if n_ph > len(images):
      raise ValueError(
        f"more image placeholders {ph!r} ({n_ph}) than images ({len(images)}) in the text"
      )
    if not images:
      return self.encode(text, add_bos=add_bos), None, None
    pixels, sizes = self.preprocess(images)
    counts = [
      self.vlm_config.num_image_tokens(None if sizes is None else tuple(s))
      for s in (sizes if sizes is not None else [None] * len(images))
    ]
    img = self.image_token_id
    ids = self.encode(text, add_bos=add_bos)
    if sum(t == img for t in ids) != n_ph:
      # The tokenizer does not know the placeholder as the image token: splice the ids.
      ids = []
      for j, part in enumerate(text.split(ph)):
        first = add_bos and j == 0
        if part:
          ids += self.encode(part, add_bos=first)
        elif first and self._tok().bos_id is not None:
          ids.append(int(self._tok().bos_id))
        if j < n_ph:
          ids.append(img)
    out, k = [], 0
    for t in ids:
      if t == img:
        out += [img] * counts[k]
        k += 1
      else:
        out.append(int(t))
    return out, pixels, sizes

  def chat_prompt(self, question: str, with_image: bool = True) -> str:
    """A single-turn user prompt ending where the assistant's answer starts.

    Uses the chat template of the model directory (``chat_template.jinja`` / ``.json``) or of the
    tokenizer if there is one, else LLaVA-1.5's ``"USER: <image>\\n{question} ASSISTANT:"``.

    Args:
      question: the user's text.
      with_image: put one image placeholder before the question.
    """
    ph = self.image_placeholder
    tok = getattr(self.tokenizer, "tok", None)
    template = self.chat_template or getattr(tok, "chat_template", None)
    if template and tok is not None:
      if "image" in template:  # a multimodal template renders typed content parts
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
      else:
        content = (f"{ph}\n" if with_image else "") + question
      return tok.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template=template,
        add_generation_prompt=True,
        tokenize=False,
      )
    return f"USER: {ph}\n{question} ASSISTANT:" if with_image else f"USER: {question} ASSISTANT:"

  # -- forward -------------------------------------------------------------------------------------
  def embed_inputs(self, input_ids, pixel_values=None, image_sizes=None) -> jax.Array:
    """The decoder's input sequence (B, T, D): the space attribution works in.

    Token embeddings, with the projected image features merged into the image-token positions
    when ``pixel_values`` are given (jitted; ``image_sizes`` are static, new pixels of the same
    shape recompile nothing).
    """
    ids = self._check_ids(input_ids)
    if pixel_values is None:
      return super().embed_inputs(ids)
    pixels, sizes = self._prepare_images(ids, pixel_values, image_sizes)
    return _vlm_embed(self.module, self.params, ids, pixels, sizes)

  def __call__(
    self,
    input_ids,
    attention_mask=None,
    *,
    pixel_values=None,
    image_sizes=None,
    return_hidden: bool = False,
  ):
    """Logits (B, T, V) in float32 (and each decoder layer's output with ``return_hidden``)."""
    if pixel_values is None:
      return super().__call__(input_ids, attention_mask, return_hidden=return_hidden)
    ids = self._check_ids(input_ids)
    mask = self._mask(ids, attention_mask)
    pixels, sizes = self._prepare_images(ids, pixel_values, image_sizes)
    f, a = self.intercept
    return _vlm_forward(self.module, f, self.params, a, ids, mask, pixels, sizes, return_hidden)

  # -- generation ----------------------------------------------------------------------------------
  def generate_ids(
    self,
    input_ids,
    attention_mask=None,
    *,
    pixel_values=None,
    image_sizes=None,
    inputs_embeds=None,
    **kw,
  ) -> np.ndarray:
    """New token ids (B, N) with KV caching: prefill on the merged embeddings, then decode."""
    if pixel_values is not None:
      if inputs_embeds is not None:
        raise ValueError("pass pixel_values or inputs_embeds, not both")
      inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_sizes)
    return super().generate_ids(input_ids, attention_mask, inputs_embeds=inputs_embeds, **kw)

  def generate(
    self,
    prompt,
    *,
    image=None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
  ):
    """Generates a continuation of ``prompt`` about ``image`` (KV cache; steering applies).

    Args:
      prompt: the prompt text with one ``lm.image_placeholder`` per image (see ``chat_prompt``);
        without images, anything ``LanguageModel.generate`` takes.
      image: a path, PIL image or array, or a list of them (one per placeholder).
      max_new_tokens: number of tokens to produce.
      temperature: 0 for greedy decoding.
      top_p: nucleus sampling mass.
      seed: sampling seed.
      stop_at_eos: stop (and pad) a row at EOS.

    Returns:
      The generated text (for a string prompt).
    """
    kw = dict(
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_p=top_p,
      seed=seed,
      stop_at_eos=stop_at_eos,
    )
    images = as_image_list(image)
    if not isinstance(prompt, str):
      if images:
        raise ValueError("with images, give the prompt as text with image placeholders")
      return super().generate(prompt, **kw)
    bos = self._bos_text()
    add_bos = not (bos and prompt.startswith(bos))
    ids, pixels, sizes = self.encode_multimodal(prompt, images, add_bos=add_bos)
    if pixels is None:
      return self._decode_new(super().generate_ids(*self.prepare_batch([ids]), **kw))
    ids_arr, mask = self.prepare_batch([ids])
    out = self.generate_ids(ids_arr, mask, pixel_values=pixels, image_sizes=sizes, **kw)
    return self._decode_new(out)

  def _decode_new(self, out) -> str:
    return self.decode(_strip(np.asarray(out)[0], self.config.eos_token_id))


# ------------------------------------------------------------------------------------------------
# Construction.


def is_llava_dir(path: pathlib.Path) -> bool:
  """Whether ``path/config.json`` names a LLaVA ``model_type``."""
  try:
    hf = json.loads((path / "config.json").read_text())
  except (OSError, json.JSONDecodeError):
    return False
  return isinstance(hf, dict) and hf.get("model_type") in LLAVA_MODEL_TYPES


def _read_chat_template(path: pathlib.Path) -> str | None:
  jinja = path / "chat_template.jinja"
  if jinja.is_file():
    return jinja.read_text()
  js = path / "chat_template.json"
  if js.is_file():
    try:
      return json.loads(js.read_text()).get("chat_template")
    except (json.JSONDecodeError, AttributeError):
      raise ValueError(f"corrupt chat template file {js}") from None
  return None


def load_llava(
  path: str | pathlib.Path,
  *,
  dtype=None,
  mesh: jax.sharding.Mesh | None = None,
  tokenizer=None,
  rules=loading.DEFAULT_RULES,
  source=None,
) -> VisionLanguageModel:
  """Loads a LLaVA / LLaVA-NeXT safetensors directory (what ``jaxsteer.load`` does for one)."""
  from jaxsteer._src.models import loader

  lm = loader.load(path, dtype=dtype, mesh=mesh, tokenizer=tokenizer, rules=rules)
  if not isinstance(lm, VisionLanguageModel):
    raise ValueError(f"{path} is not a LLaVA model directory")
  return lm if source is None else lm.replace(source=str(source))


def _wrap(module, params, cfg, tok, mesh, source, path):
  return VisionLanguageModel(
    module,
    params,
    cfg.text,
    tok,
    mesh,
    source=source if source is not None else (None if path is None else str(path)),
    vlm_config=cfg,
    processor_dir=path,
    chat_template=None if path is None else _read_chat_template(pathlib.Path(path)),
  )


def init_random(
  config: LlavaConfig, seed: int = 0, dtype=jnp.float32, tokenizer=None, image_processor=None
) -> VisionLanguageModel:
  """A randomly initialised ``VisionLanguageModel`` (for tests and examples)."""
  module = Llava(config, dtype=dtype, param_dtype=dtype)
  params = init_params(module, seed)
  return VisionLanguageModel(
    module, params, config.text, tokenizer, vlm_config=config, image_processor=image_processor
  )


ARCH = registry.register(
  registry.Architecture(
    "llava",
    LlavaConfig.from_hf,
    lambda cfg, dtype: Llava(cfg, dtype=dtype, param_dtype=dtype),
    llava_weights,
    aliases=("llava_next",),
    text=False,
    wrap=_wrap,
    init_params=init_params,
    text_config=lambda cfg: cfg.text,
    shapes=expected_shapes,
    config_type=LlavaConfig,
  )
)
