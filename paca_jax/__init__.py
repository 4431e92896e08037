"""paca_jax: PaCA (Woo et al., "PaCA: Partial Connection Adaptation for Efficient Fine-Tuning",
ICLR 2025) in JAX/Flax, with LoRA and full fine-tuning baselines under one sharded train step.

Usage::

  import paca_jax
  plan = paca_jax.select(params, targets=r".*_proj", rank=16, key=jax.random.key(0))
  trainer = paca_jax.Trainer(paca_jax.Paca(plan), paca_jax.lm_loss_fn(model), optax.adam(1e-3))
  state = trainer.init(params)
  state, loss = trainer.step(state, {"x": tokens, "y": targets})
"""

from importlib import metadata as _metadata

try:
  __version__ = _metadata.version("jaxsteer")  # one version for the distribution's four packages
except _metadata.PackageNotFoundError:  # a checkout used without `pip install`
  __version__ = "0+unknown"

from paca_jax import export, lora, models
from paca_jax._src.adapters import (
  Full,
  Lora,
  LoraNf4,
  LoraPlan,
  Paca,
  PacaInt8,
  PacaNf4,
  dequantize_int8,
  int8_partial_matmul,
  intercept,
  lora_plan,
  quantize_int8,
  row_values,
  write_rows,
)
from paca_jax._src.hf_names import flax_module_path, hf_module_name
from paca_jax._src.nf4 import (
  NF4_TABLE,
  dequantize_nf4,
  nf4_matmul,
  nf4_partial_matmul,
  quantize_nf4,
)
from paca_jax._src.ops import partial_matmul
from paca_jax._src.plan import SELECTORS, Plan, PlanEntry, register_selector, select
from paca_jax._src.training import (
  DEFAULT_RULES,
  PARAM_LOGICAL_AXES,
  Trainer,
  TrainState,
  lm_loss_fn,
  logical_axes,
  make_mesh,
  tree_shardings,
)

__all__ = [
  "__version__",
  "DEFAULT_RULES",
  "Full",
  "Lora",
  "LoraNf4",
  "LoraPlan",
  "NF4_TABLE",
  "PARAM_LOGICAL_AXES",
  "Paca",
  "PacaInt8",
  "PacaNf4",
  "Plan",
  "PlanEntry",
  "SELECTORS",
  "TrainState",
  "Trainer",
  "dequantize_int8",
  "dequantize_nf4",
  "export",
  "flax_module_path",
  "hf_module_name",
  "int8_partial_matmul",
  "intercept",
  "lm_loss_fn",
  "logical_axes",
  "lora",
  "lora_plan",
  "make_mesh",
  "models",
  "nf4_matmul",
  "nf4_partial_matmul",
  "partial_matmul",
  "quantize_int8",
  "quantize_nf4",
  "register_selector",
  "row_values",
  "select",
  "tree_shardings",
  "write_rows",
]
