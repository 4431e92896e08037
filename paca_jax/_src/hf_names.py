"""Flax parameter paths <-> Hugging Face tensor / module names for Llama-family decoders.

The Llama layout (``model_type`` llama, mistral, qwen2) of ``jaxsteer``'s ``CausalLM`` and
``paca_jax.models.TinyLlama``, for target matching and for the exports of PaCA (Woo et al., ICLR
2025) and LoRA fine-tunes. It is a name table of its own, not jaxsteer's architecture registry
(``jaxsteer/_src/models/registry.py``), because the registry's weight maps are built from a parsed
``ModelConfig`` (layer count, tied head, biases, name variants), while here names are needed from a
module path alone (``select(targets=["model.layers.0.self_attn.q_proj"])``, ``hf_module_name``),
and ``TinyLlama`` (``attn_norm`` / ``mlp_norm``, an ``LMConfig``) is not a registered architecture.

llama2.c checkpoints need nothing extra: ``jaxsteer``'s reader already permutes the rows of
``wq``/``wk`` into HF's ``rotate_half`` order, so their Flax params are in the HF Llama layout.

Usage::

  hf_module_name("layers_0/attn/q_proj")           # "model.layers.0.self_attn.q_proj"
  flax_module_path("model.layers.0.mlp.up_proj")   # "layers_0/mlp/up_proj"
  tensors = hf_tensors(params)                     # {"model.embed_tokens.weight": ..., ...}
  cfg = hf_config(config, dtype="bfloat16")        # config.json contents
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

__all__ = [
  "HF_ARCHITECTURES",
  "LINEAR_MODULES",
  "flax_module_path",
  "hf_config",
  "hf_module_name",
  "hf_tensors",
  "is_linear",
]

# model_type -> transformers class name.
HF_ARCHITECTURES = {
  "llama": "LlamaForCausalLM",
  "mistral": "MistralForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
}

# (Flax module path regex, HF module name template, kind). Kind "linear": a ``kernel`` (in, out)
# that HF stores as ``weight`` (out, in) of an ``nn.Linear``; "embed": ``embedding``; "norm":
# ``scale``. Both jaxsteer's norm names and TinyLlama's are listed.
_MODULES: tuple[tuple[str, str, str], ...] = (
  (r"embed", "model.embed_tokens", "embed"),
  (r"layers_(\d+)/attn/(q|k|v|o)_proj", r"model.layers.\1.self_attn.\2_proj", "linear"),
  (r"layers_(\d+)/mlp/(gate|up|down)_proj", r"model.layers.\1.mlp.\2_proj", "linear"),
  (r"layers_(\d+)/(input_norm|attn_norm)", r"model.layers.\1.input_layernorm", "norm"),
  (
    r"layers_(\d+)/(post_attention_norm|mlp_norm)",
    r"model.layers.\1.post_attention_layernorm",
    "norm",
  ),
  (r"norm", "model.norm", "norm"),
  (r"lm_head", "lm_head", "linear"),
)
_HF_MODULES: tuple[tuple[str, str], ...] = (
  (r"model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj", r"layers_\1/attn/\2_proj"),
  (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj", r"layers_\1/mlp/\2_proj"),
  (r"lm_head", "lm_head"),
)
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _lookup(path: str):
  for pat, tmpl, kind in _MODULES:
    m = re.fullmatch(pat, path)
    if m:
      return m.expand(tmpl), kind
  return None, None


def hf_module_name(path: str) -> str | None:
  """The HF module name of a Flax module path (``None`` when it has none)."""
  return _lookup(path)[0]


def is_linear(path: str) -> bool:
  """Whether the Flax module path is an ``nn.Linear`` in the HF model."""
  return _lookup(path)[1] == "linear"


def flax_module_path(name: str) -> str | None:
  """The Flax module path of an HF linear module name (``base_model.model.`` prefix allowed)."""
  name = name.removeprefix("base_model.model.")
  for pat, tmpl in _HF_MODULES:
    m = re.fullmatch(pat, name)
    if m:
      return m.expand(tmpl)
  return None


_LEAVES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def hf_tensors(params) -> dict[str, np.ndarray]:
  """HF tensor names and layouts (linear weights ``(out, in)``) of a Llama-family params tree.

  ``params`` is the inner tree (``variables["params"]``; ``export.hf_state_dict`` takes either).

  Raises:
    ValueError: a parameter has no HF name (an architecture this map does not cover).
  """
  out = {}
  for path, leaf in traverse_util.flatten_dict(params, sep="/").items():
    module, _, leaf_name = path.rpartition("/")
    name, kind = _lookup(module)
    if name is None or leaf_name not in _LEAVES:
      raise ValueError(
        f"parameter {path!r} has no Hugging Face name: only Llama-family decoders "
        f"({', '.join(HF_ARCHITECTURES)}) with jaxsteer / paca_jax module names can be exported"
      )
    arr = np.asarray(leaf)
    if kind == "linear" and leaf_name == "kernel":
      if arr.ndim != 2:
        raise ValueError(f"parameter {path!r}: expected a 2-D kernel, got shape {arr.shape}")
      arr = np.ascontiguousarray(arr.T)
    out[f"{name}.{_LEAVES[leaf_name]}"] = arr
  return out


def _dtype_name(dtype) -> str:
  return np.dtype(dtype).name


def hf_config(config, dtype, source_config: Mapping | None = None) -> dict:
  """``config.json`` for a jaxsteer ``ModelConfig`` or a paca_jax ``LMConfig``.

  With ``source_config`` (the source model's ``config.json``) that dictionary is kept and only
  its dtype is updated, so every field transformers reads stays as it was.

  Raises:
    ValueError: an architecture without an HF mapping here (e.g. GPT-2's fused ``c_attn``).
  """
  dt = _dtype_name(dtype)
  if source_config is not None:
    cfg = dict(source_config)
    if cfg.get("model_type") not in HF_ARCHITECTURES:
      raise ValueError(
        f"no Hugging Face export mapping for model_type {cfg.get('model_type')!r}; "
        f"supported: {', '.join(HF_ARCHITECTURES)}"
      )
    cfg["dtype"] = dt
    cfg.pop("torch_dtype", None)
    return cfg
  arch = getattr(config, "arch", None)
  if arch is not None:  # jaxsteer ModelConfig
    if arch not in HF_ARCHITECTURES:
      raise ValueError(
        f"no Hugging Face export mapping for architecture {arch!r}; "
        f"supported: {', '.join(HF_ARCHITECTURES)}"
      )
    rope = {"rope_theta": float(config.rope_theta), "rope_type": "default"}
    if config.rope_scaling is not None:
      rope.update(dict(config.rope_scaling))
    cfg = {
      "model_type": arch,
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "max_position_embeddings": config.max_position_embeddings,
      "rms_norm_eps": config.norm_eps,
      "rope_parameters": rope,
      "tie_word_embeddings": config.tie_word_embeddings,
      "bos_token_id": config.bos_token_id,
      "eos_token_id": config.eos_token_id,
      "pad_token_id": config.pad_token_id,
    }
    if arch == "llama":
      cfg.update(attention_bias=config.attention_bias, mlp_bias=config.mlp_bias)
    if arch == "mistral":
      cfg["sliding_window"] = config.sliding_window
    if arch == "qwen2":
      cfg["use_sliding_window"] = False
  elif all(hasattr(config, a) for a in ("vocab", "dim", "n_layers", "n_heads", "ffn")):
    # paca_jax.models.LMConfig: TinyLlama is a Llama (flax RMSNorm eps 1e-6, RoPE base 1e4).
    cfg = {
      "model_type": "llama",
      "vocab_size": config.vocab,
      "hidden_size": config.dim,
      "intermediate_size": config.ffn,
      "num_hidden_layers": config.n_layers,
      "num_attention_heads": config.n_heads,
      "num_key_value_heads": config.n_heads,
      "head_dim": config.dim // config.n_heads,
      "max_position_embeddings": 2048,
      "rms_norm_eps": 1e-6,
      "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
      "tie_word_embeddings": False,
      "attention_bias": False,
      "mlp_bias": False,
      "bos_token_id": None,
      "eos_token_id": None,
      "pad_token_id": None,
    }
  else:
    raise ValueError(
      f"no Hugging Face export mapping for a config of type {type(config).__name__}; "
      "pass a jaxsteer ModelConfig or a paca_jax.models.LMConfig"
    )
  cfg["architectures"] = [HF_ARCHITECTURES[cfg["model_type"]]]
  cfg["hidden_act"] = "silu"
  cfg["dtype"] = dt
  return cfg
