"""The weight map and module shared by the Llama-like decoders (every text architecture but GPT-2)."""

from __future__ import annotations

from jaxsteer._src.models.config import ModelConfig
from jaxsteer._src.models.registry import Tensor, WeightMap


def module(cfg: ModelConfig, dtype):
  from jaxsteer._src.models.modules import CausalLM

  return CausalLM(cfg, dtype=dtype, param_dtype=dtype)


def weights(
  cfg: ModelConfig,
  names=None,
  *,
  prefix: str = "model.",
  lm_head: str = "lm_head.weight",
  fused: bool = False,
) -> WeightMap:
  """HF <-> Flax entries of a Llama-like decoder.

  Args:
    cfg: the config.
    names: the checkpoint's tensor names (unused: these decoders have one naming).
    prefix: prefix of the decoder's tensors (``model.``; a VLM's text model sits elsewhere).
    lm_head: name of the output projection (absent with tied embeddings).
    fused: Phi-3's fused ``qkv_proj`` and ``gate_up_proj``.
  """
  del names
  h, kv, dh, f = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
  out = [Tensor(f"{prefix}embed_tokens.weight", ("embed/embedding",))]
  for i in range(cfg.num_layers):
    p, q = f"{prefix}layers.{i}.", f"layers_{i}/"
    if fused:
      out.append(
        Tensor(
          f"{p}self_attn.qkv_proj.weight",
          tuple(f"{q}attn/{n}/kernel" for n in ("q_proj", "k_proj", "v_proj")),
          "split_T",
          (h * dh, kv * dh, kv * dh),
        )
      )
    else:
      for proj in ("q_proj", "k_proj", "v_proj"):
        out.append(Tensor(f"{p}self_attn.{proj}.weight", (f"{q}attn/{proj}/kernel",), "T"))
        if cfg.attention_bias:
          out.append(Tensor(f"{p}self_attn.{proj}.bias", (f"{q}attn/{proj}/bias",)))
    out.append(Tensor(f"{p}self_attn.o_proj.weight", (f"{q}attn/o_proj/kernel",), "T"))
    if cfg.qk_norm:
      for n in ("q_norm", "k_norm"):
        out.append(Tensor(f"{p}self_attn.{n}.weight", (f"{q}attn/{n}/scale",)))
    if fused:
      out.append(
        Tensor(
          f"{p}mlp.gate_up_proj.weight",
          (f"{q}mlp/gate_proj/kernel", f"{q}mlp/up_proj/kernel"),
          "split_T",
          (f, f),
        )
      )
      projs = ("down_proj",)
    else:
      projs = ("gate_proj", "up_proj", "down_proj")
    for proj in projs:
      out.append(Tensor(f"{p}mlp.{proj}.weight", (f"{q}mlp/{proj}/kernel",), "T"))
      if cfg.mlp_bias:
        out.append(Tensor(f"{p}mlp.{proj}.bias", (f"{q}mlp/{proj}/bias",)))
    norms = [("input_layernorm", "input_norm"), ("post_attention_layernorm", "post_attention_norm")]
    if cfg.sandwich_norms:
      norms += [
        ("pre_feedforward_layernorm", "pre_feedforward_norm"),
        ("post_feedforward_layernorm", "post_feedforward_norm"),
      ]
    for src, dst in norms:
      out.append(Tensor(f"{p}{src}.weight", (f"{q}{dst}/scale",)))
  out.append(Tensor(f"{prefix}norm.weight", ("norm/scale",)))
  if not cfg.tie_word_embeddings:
    out.append(Tensor(lm_head, ("lm_head/kernel",), "T"))
  return tuple(out)


def no_sliding(hf, model_type):
  if hf.get("use_sliding_window"):
    raise ValueError(f"{model_type} with use_sliding_window=True is not supported")
