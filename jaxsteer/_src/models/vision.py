"""A CLIP ViT vision tower in Flax Linen (the image encoder of LLaVA).

CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language
Supervision") encodes an image as a sequence: a patch convolution, a learned class embedding in
front, learned position embeddings, a LayerNorm (``pre_layrnorm``, HF's spelling) and pre-norm
encoder layers with ``quick_gelu`` MLPs. LLaVA (Liu et al., 2023) reads the hidden states of one
(or several) of its layers, so ``VisionTower`` returns all of them, like transformers'
``output_hidden_states``: entry 0 is the pre-normed embedding sequence, entry ``i`` the output of
encoder layer ``i - 1``.

  >>> cfg = VisionConfig(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
  ...                    image_size=28, patch_size=14)
  >>> tower = VisionTower(cfg)
  >>> pixels = jnp.zeros((1, 3, 28, 28))  # NCHW, as the HF image processors return them
  >>> params = tower.init(jax.random.PRNGKey(0), pixels)["params"]
  >>> hidden = tower.apply({"params": params}, pixels)  # 3 arrays of shape (1, 5, 32)

Layer norms are computed in float32 (``modules.LayerNorm``), whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsteer._src.models.modules import LayerNorm

Dtype = Any


def quick_gelu(x):
  """CLIP's ``x * sigmoid(1.702 x)``."""
  return x * jax.nn.sigmoid(1.702 * x)


# Activation registry (HF ``ACT2FN`` names used by CLIP towers and LLaVA projectors).
ACTIVATIONS = {
  "quick_gelu": quick_gelu,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "relu": jax.nn.relu,
}


def activation(name: str):
  """The activation function registered under ``name`` (``ValueError`` if unknown)."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
      f"unsupported activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}"
    ) from None


# transformers' CLIPVisionConfig defaults, as LLaVA's configs fill them in (CLIP ViT-L/14-336).
_LLAVA_VISION_DEFAULTS = dict(
  hidden_size=1024,
  intermediate_size=4096,
  num_hidden_layers=24,
  num_attention_heads=16,
  image_size=336,
  patch_size=14,
)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Static description of a CLIP ViT vision tower (hashable).

  Attributes:
    hidden_size: residual width of the tower.
    intermediate_size: MLP width.
    num_layers: number of encoder layers.
    num_heads: attention heads.
    image_size: side of the (square) input image in pixels.
    patch_size: side of one patch; the tower sees ``(image_size // patch_size) ** 2`` patches
      plus one class token.
    num_channels: input channels (3).
    layer_norm_eps: LayerNorm epsilon.
    hidden_act: MLP activation (``quick_gelu`` for CLIP).
  """

  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  image_size: int
  patch_size: int
  num_channels: int = 3
  layer_norm_eps: float = 1e-5
  hidden_act: str = "quick_gelu"

  def __post_init__(self):
    for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "patch_size"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"vision config field {name} must be positive, got {getattr(self, name)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(
        f"vision hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
      )
    if self.image_size % self.patch_size:
      raise ValueError(
        f"vision image_size ({self.image_size}) must be a multiple of patch_size "
        f"({self.patch_size})"
      )
    activation(self.hidden_act)

  @property
  def patches_per_side(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.patches_per_side**2

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> VisionConfig:
    """Builds a config from the ``vision_config`` of a HF LLaVA ``config.json``."""
    model_type = hf.get("model_type", "clip_vision_model")
    if model_type not in ("clip_vision_model", "clip"):
      raise ValueError(
        f"unsupported vision tower model_type={model_type!r}; supported: clip_vision_model"
      )
    hf = {**_LLAVA_VISION_DEFAULTS, **{k: v for k, v in hf.items() if v is not None}}
    return cls(
      hidden_size=int(hf["hidden_size"]),
      intermediate_size=int(hf["intermediate_size"]),
      num_layers=int(hf["num_hidden_layers"]),
      num_heads=int(hf["num_attention_heads"]),
      image_size=int(hf["image_size"]),
      patch_size=int(hf["patch_size"]),
      num_channels=int(hf.get("num_channels", 3)),
      layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
      hidden_act=hf.get("hidden_act", "quick_gelu"),
    )


def _dense(features, dtype, param_dtype, name):
  return nn.Dense(
    features,
    use_bias=True,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=nn.initializers.normal(0.02),
    name=name,
  )


class VisionEmbeddings(nn.Module):
  """Patch convolution (no bias) + class embedding + learned position embeddings."""

  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    cfg = self.config
    n, c, h, w = pixel_values.shape
    if (h, w) != (cfg.image_size, cfg.image_size) or c != cfg.num_channels:
      raise ValueError(
        f"pixel_values of shape {pixel_values.shape} do not match the vision tower's "
        f"(N, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size})"
      )
    x = jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(self.dtype)  # NCHW -> NHWC
    patches = nn.Conv(
      cfg.hidden_size,
      (cfg.patch_size, cfg.patch_size),
      strides=(cfg.patch_size, cfg.patch_size),
      padding="VALID",
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="patch_embedding",
    )(x)
    patches = patches.reshape(n, -1, cfg.hidden_size)  # row-major over the patch grid
    cls = self.param(
      "class_embedding",
      nn.initializers.normal(cfg.hidden_size**-0.5),
      (cfg.hidden_size,),
      self.param_dtype,
    )
    cls = jnp.broadcast_to(cls.astype(self.dtype), (n, 1, cfg.hidden_size))
    x = jnp.concatenate([cls, patches], axis=1)
    pos = nn.Embed(
      cfg.num_patches + 1,
      cfg.hidden_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      embedding_init=nn.initializers.normal(0.02),
      name="position_embedding",
    )(jnp.arange(cfg.num_patches + 1))
    return x + pos[None]


class VisionAttention(nn.Module):
  """Bidirectional multi-head self-attention with biases (softmax in float32)."""

  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    b, t, d = x.shape
    h = cfg.num_heads
    dh = d // h
    q = _dense(d, self.dtype, self.param_dtype, "q_proj")(x).reshape(b, t, h, dh)
    k = _dense(d, self.dtype, self.param_dtype, "k_proj")(x).reshape(b, t, h, dh)
    v = _dense(d, self.dtype, self.param_dtype, "v_proj")(x).reshape(b, t, h, dh)
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores * (1.0 / np.sqrt(dh)), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(b, t, d)
    return _dense(d, self.dtype, self.param_dtype, "out_proj")(out)


class VisionMLP(nn.Module):
  """``fc2(act(fc1(x)))``."""

  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    x = _dense(cfg.intermediate_size, self.dtype, self.param_dtype, "fc1")(x)
    x = activation(cfg.hidden_act)(x)
    return _dense(cfg.hidden_size, self.dtype, self.param_dtype, "fc2")(x)


class VisionEncoderLayer(nn.Module):
  """Pre-norm CLIP encoder layer."""

  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = LayerNorm(cfg.layer_norm_eps, name="layer_norm1", **kw)(x)
    x = x + VisionAttention(cfg, name="self_attn", **kw)(h)
    h = LayerNorm(cfg.layer_norm_eps, name="layer_norm2", **kw)(x)
    return x + VisionMLP(cfg, name="mlp", **kw)(h)


class VisionTower(nn.Module):
  """CLIP ViT returning every hidden state.

  Submodules: ``embeddings``, ``pre_layrnorm``, ``encoder_layers_0 .. encoder_layers_{L-1}``
  (named apart from the decoder's ``layers_i`` so no text-layer interceptor can match them).
  CLIP's ``post_layernorm`` only feeds the pooled output, which LLaVA does not use, so it is
  omitted.

  Returns:
    A tuple of ``num_layers + 1`` arrays (N, 1 + num_patches, D): the pre-normed embeddings, then
    each encoder layer's output.
  """

  config: VisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = VisionEmbeddings(cfg, name="embeddings", **kw)(pixel_values)
    x = LayerNorm(cfg.layer_norm_eps, name="pre_layrnorm", **kw)(x)
    hidden = [x]
    for i in range(cfg.num_layers):
      x = VisionEncoderLayer(cfg, name=f"encoder_layers_{i}", **kw)(x)
      hidden.append(x)
    return tuple(hidden)
