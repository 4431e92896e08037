"""Qwen2 / Qwen2.5: Llama with q/k/v biases."""

from jaxsteer._src.models import registry
from jaxsteer._src.models.archs import _decoder
from jaxsteer._src.models.config import ModelConfig, decoder_fields


def parse(hf) -> ModelConfig:
  _decoder.no_sliding(hf, "Qwen2")
  fields = decoder_fields(hf, "qwen2")
  fields["attention_bias"] = bool(hf.get("attention_bias", True))
  return ModelConfig(**fields)


ARCH = registry.register(registry.Architecture("qwen2", parse, _decoder.module, _decoder.weights))
