"""One module per architecture; importing each registers it (``registry.register``)."""

from jaxsteer._src.models.archs import (  # noqa: F401
  gemma2,
  gemma3,
  gpt2,
  llama,
  llava,
  mistral,
  phi3,
  qwen2,
  qwen3,
)
