"""Gemma 3 text (``gemma3_text``): Gemma 2's layout with q/k RMSNorm, no soft-capping by default,
five local layers per global one, and separate RoPE bases (local: unscaled ``rope_local_base_freq``;
global: ``rope_theta`` with its scaling)."""

from jaxsteer._src.models import registry
from jaxsteer._src.models.archs import _decoder
from jaxsteer._src.models.archs.gemma2 import gemma_common
from jaxsteer._src.models.config import ModelConfig, parse_rope


def parse(hf) -> ModelConfig:
  hf = dict(hf)
  rp = hf.get("rope_parameters")
  if isinstance(rp, dict) and ("full_attention" in rp or "sliding_attention" in rp):
    # transformers 5: one RoPE dict per layer type.
    local = dict(rp.get("sliding_attention") or {})
    local_theta, local_scaling, _ = parse_rope({}, 10000.0, params=local)
    if local_scaling is not None:
      raise ValueError("Gemma 3 with scaled RoPE on the sliding layers is not supported")
    hf["rope_parameters"] = dict(rp.get("full_attention") or {})
  else:
    local_theta = float(hf.get("rope_local_base_freq", 10000.0))
  caps = dict(attn_logit_softcapping=None, final_logit_softcapping=None)
  fields = gemma_common(hf, "gemma3_text", softcaps=caps, default_theta=1_000_000.0, pattern=6)
  return ModelConfig(**fields, qk_norm=True, rope_local_theta=local_theta)


ARCH = registry.register(
  registry.Architecture("gemma3_text", parse, _decoder.module, _decoder.weights)
)
