"""Export of PaCA / LoRA fine-tunes: merged safetensors and exact PEFT-style LoRA adapters."""

from paca_jax._src.export import (
  apply_lora,
  hf_state_dict,
  save_peft_adapter,
  save_safetensors,
  to_lora,
)

__all__ = ["apply_lora", "hf_state_dict", "save_peft_adapter", "save_safetensors", "to_lora"]
