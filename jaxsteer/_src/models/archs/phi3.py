"""Phi-3 / Phi-3.5 (dense): fused ``qkv_proj`` and ``gate_up_proj``, LongRoPE (``su``) scaling,
partial rotary, optional sliding window.

LongRoPE picks its short or long factors per forward pass from the largest position, as
transformers does. Known difference: a generation that crosses ``original_max_position_embeddings``
keeps the keys cached before the switch (short factors), while transformers' Phi-3 drops its cache
at the switch and recomputes it; tokens after the switch can differ.
"""

import functools

from jaxsteer._src.models import registry
from jaxsteer._src.models.archs import _decoder
from jaxsteer._src.models.config import ModelConfig, decoder_fields, hf_int


def parse(hf) -> ModelConfig:
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise ValueError(f"Phi-3 with hidden_act={act!r} is not supported (only silu)")
  fields = decoder_fields(hf, "phi3", rms_norm_eps=1e-5)
  fields["attention_bias"] = False
  return ModelConfig(**fields, sliding_window=hf_int(hf, "sliding_window", None))


ARCH = registry.register(
  registry.Architecture(
    "phi3", parse, _decoder.module, functools.partial(_decoder.weights, fused=True)
  )
)
