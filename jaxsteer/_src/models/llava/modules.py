"""The LLaVA Flax modules (``MultiModalProjector``, ``Llava``) and their parameter trees.

``Llava`` has the submodules ``vision_tower`` (``VisionTower``), ``multi_modal_projector`` and
``language_model`` (the text ``CausalLM``, unchanged, so steering and capture interceptors work as
for a language model), plus the ``image_newline`` parameter for NeXT.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxsteer._src.models.llava.config import LlavaConfig
from jaxsteer._src.models.llava.geometry import anyres_grid_shape, static_sizes, unpad_slices
from jaxsteer._src.models.modules import CausalLM
from jaxsteer._src.models.vision import VisionTower, activation

Dtype = Any


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
    sizes = static_sizes(image_sizes)
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
