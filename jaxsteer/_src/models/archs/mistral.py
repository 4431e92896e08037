"""Mistral: Llama with a sliding attention window on every layer."""

from jaxsteer._src.models import registry
from jaxsteer._src.models.archs import _decoder
from jaxsteer._src.models.config import ModelConfig, decoder_fields, hf_int


def parse(hf) -> ModelConfig:
  return ModelConfig(
    **decoder_fields(hf, "mistral"), sliding_window=hf_int(hf, "sliding_window", None)
  )


ARCH = registry.register(registry.Architecture("mistral", parse, _decoder.module, _decoder.weights))
