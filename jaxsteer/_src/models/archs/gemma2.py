"""Gemma 2: GeGLU, (1 + w) RMSNorm, pre- and post-norms, sqrt(D) embedding scale, attention-
and final-logit soft-capping, alternating sliding-window (even layers) and global layers."""

from jaxsteer._src.models import registry
from jaxsteer._src.models.archs import _decoder
from jaxsteer._src.models.config import ModelConfig, decoder_fields, hf_float, hf_int


def gemma_common(hf, model_type, *, softcaps, default_theta=10000.0, pattern=2):
  """Fields shared by Gemma 2 and Gemma 3 text (both config forms)."""
  fields = decoder_fields(
    hf,
    model_type,
    default_theta=default_theta,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    head_dim=256,
  )
  n = fields["num_layers"]
  sliding = hf_int(hf, "sliding_window", None)
  if sliding is None:
    sliding = hf_int(hf, "sliding_window_size", 4096)
  types = hf.get("layer_types")
  if types is None:  # transformers 4: a pattern (every `pattern`-th layer is global)
    pattern = hf_int(hf, "sliding_window_pattern", pattern)
    types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
  if hf.get("use_bidirectional_attention"):
    raise ValueError(f"{model_type} with use_bidirectional_attention is not supported")
  act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
  caps = {}
  for key, default in softcaps.items():
    caps[key] = hf_float(hf, key, None) if key in hf else default
  return dict(
    fields,
    sliding_window=sliding,
    layer_types=tuple(types),
    hidden_act=act,
    norm_plus_one=True,
    sandwich_norms=True,
    scale_embeddings=True,
    query_pre_attn_scalar=hf_float(hf, "query_pre_attn_scalar", 256.0),
    **caps,
  )


def parse(hf) -> ModelConfig:
  caps = dict(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
  return ModelConfig(**gemma_common(hf, "gemma2", softcaps=caps))


ARCH = registry.register(registry.Architecture("gemma2", parse, _decoder.module, _decoder.weights))
