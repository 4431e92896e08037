"""One module per architecture; importing each registers it (``registry.register``)."""

from jaxsteer._src.models import llava  # noqa: F401, E402  (registers llava and llava_next)
from jaxsteer._src.models.archs import (  # noqa: F401
  gemma2,
  gemma3,
  gpt2,
  llama,
  mistral,
  phi3,
  qwen2,
  qwen3,
)
