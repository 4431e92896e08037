"""Small Llama-shaped Flax models for tests, the CLI and benchmarks (see ``_src/models.py``)."""

from paca_jax._src.models import CONFIGS, LMConfig, TinyLlama, lm_loss

__all__ = ["CONFIGS", "LMConfig", "TinyLlama", "lm_loss"]
