"""Exports of PaCA / LoRA fine-tunes: HF model directories, peft LoRA adapters, PaCA adapters."""

from paca_jax._src.export import (
  DEFAULT_MAX_SHARD_BYTES,
  MARKER,
  TOKENIZER_FILES,
  apply_lora,
  hf_state_dict,
  load_paca_adapter,
  save_merged,
  save_paca_adapter,
  save_peft_adapter,
  to_lora,
)

__all__ = [
  "DEFAULT_MAX_SHARD_BYTES",
  "MARKER",
  "TOKENIZER_FILES",
  "apply_lora",
  "hf_state_dict",
  "load_paca_adapter",
  "save_merged",
  "save_paca_adapter",
  "save_peft_adapter",
  "to_lora",
]
