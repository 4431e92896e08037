"""Llama 2 / 3 / 3.1 / 3.2 (grouped-query attention, llama3 RoPE scaling, tied or untied)."""

from jaxsteer._src.models import registry
from jaxsteer._src.models.archs import _decoder
from jaxsteer._src.models.config import ModelConfig, decoder_fields


def parse(hf) -> ModelConfig:
  return ModelConfig(**decoder_fields(hf, "llama"))


ARCH = registry.register(registry.Architecture("llama", parse, _decoder.module, _decoder.weights))
