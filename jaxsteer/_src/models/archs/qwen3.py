"""Qwen3 (dense): Llama with RMSNorm on each query and key head, no q/k/v bias."""

from jaxsteer._src.models import registry
from jaxsteer._src.models.archs import _decoder
from jaxsteer._src.models.config import ModelConfig, decoder_fields


def parse(hf) -> ModelConfig:
  _decoder.no_sliding(hf, "Qwen3")
  return ModelConfig(**decoder_fields(hf, "qwen3"), qk_norm=True)


ARCH = registry.register(registry.Architecture("qwen3", parse, _decoder.module, _decoder.weights))
