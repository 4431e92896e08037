"""The LLaVA weight map: HF checkpoint names (transformers 4 and 5) <-> ``Llava``'s Flax paths."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxsteer._src.models import loading, registry
from jaxsteer._src.models.llava.config import LlavaConfig
from jaxsteer._src.models.llava.modules import expected_shapes
from jaxsteer._src.models.safetensors_io import SafetensorsCheckpoint


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
  loading.check_shapes(out, cfg, want=expected_shapes(cfg))
  return out
