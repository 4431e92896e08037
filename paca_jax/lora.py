"""LoRA baseline (Hu et al., 2021) on the same interception as PaCA, for fair comparisons.

Usage::

  plan = paca_jax.lora.plan(params, targets=r".*_proj", rank=8, alpha=16)
  trainer = paca_jax.Trainer(paca_jax.lora.Lora(plan), loss_fn, optax.adam(1e-3))
"""

from paca_jax._src.adapters import Lora, LoraPlan
from paca_jax._src.adapters import lora_plan as plan

__all__ = ["Lora", "LoraPlan", "plan"]
