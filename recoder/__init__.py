"""recoder: recoding RNN language models (Ulmer 2021, arXiv:2101.00674) in JAX/Flax.

Usage::

  import recoder
  cfg = recoder.LMConfig(vocab_size=10000)
  model = recoder.LSTMLM(cfg)
  params = recoder.init_params(model, jax.random.key(0))
  out = recoder.lm_forward(model, params, x, y, recoder.zero_state(cfg, 20),
                           recoding=recoder.RecodingConfig("surprisal"), step_size=0.5)
"""

from importlib import metadata as _metadata

try:
  __version__ = _metadata.version("jaxsteer")  # one version for the distribution's four packages
except _metadata.PackageNotFoundError:  # a checkout used without `pip install`
  __version__ = "0+unknown"

from recoder._src.data import (
  Corpus,
  Vocab,
  batchify,
  bptt_batches,
  encode,
  load_corpus,
  read_tokens,
)
from recoder._src.model import (
  LSTMLM,
  ForwardOut,
  LMConfig,
  check_token_ids,
  init_params,
  lm_forward,
  zero_state,
)
from recoder._src.recode import (
  SIGNALS,
  STEP_TYPES,
  RecodingConfig,
  Signal,
  get_signal,
  init_step_params,
  node_gradient,
  recode,
  register_signal,
  step_sizes,
)

__all__ = [
  "__version__",
  "Corpus",
  "encode",
  "Vocab",
  "batchify",
  "bptt_batches",
  "load_corpus",
  "read_tokens",
  "LMConfig",
  "LSTMLM",
  "ForwardOut",
  "init_params",
  "lm_forward",
  "zero_state",
  "check_token_ids",
  "SIGNALS",
  "STEP_TYPES",
  "RecodingConfig",
  "Signal",
  "get_signal",
  "init_step_params",
  "node_gradient",
  "recode",
  "register_signal",
  "step_sizes",
]
