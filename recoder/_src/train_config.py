"""Configuration of ``recoder.train`` runs: what a run computes (``TrainConfig`` with its
``ModelConfig`` and ``RecodingConfig``: the settings stored with its checkpoints), how it is run
(``RunOptions``: free to change on resume) and what it returns (``Summary``).

Field names are the command-line flags' (``--batch-size`` -> ``batch_size``).

Usage::

  config = TrainConfig(model=ModelConfig(emb=200, hidden=200, tied=True), epochs=6, batch_size=20)
  options = RunOptions(max_steps=1000, progress=False)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from recoder._src.model import LMConfig
from recoder._src.recode import RecodingConfig

__all__ = ["ModelConfig", "RunOptions", "Summary", "TrainConfig"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The LSTM's shape apart from its vocabulary (which the corpus fixes); CLI flag names."""

  emb: int = 200
  hidden: int = 200
  layers: int = 2
  dropout: float = 0.2
  tied: bool = False
  members: int = 1

  def __post_init__(self):
    if min(self.emb, self.hidden, self.layers, self.members) <= 0:
      raise ValueError("emb, hidden, layers and members must be positive")
    if not 0 <= self.dropout < 1:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

  def lm_config(self, vocab_size: int) -> LMConfig:
    return LMConfig(
      vocab_size=vocab_size,
      embed_dim=self.emb,
      hidden_dim=self.hidden,
      num_layers=self.layers,
      dropout=self.dropout,
      tie_weights=self.tied,
      num_members=self.members,
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a run computes with (its stored settings; see ``RunOptions`` for the rest).

  The optimisation fields keep their old meaning; ``model`` and ``recoding`` say what is trained,
  ``max_train_tokens`` / ``max_eval_tokens`` keep only a prefix of the splits (0 = all).
  """

  optimizer: str = "sgd"
  lr: float = 20.0
  clip: float = 0.25
  weight_decay: float = 0.0
  lr_decay: float = 0.25
  decay_start: int = 0
  bptt: int = 35
  batch_size: int = 64
  eval_batch_size: int = 10
  epochs: int = 8
  step_size: float = 0.0
  prior_scale: float = 0.2855508637554569
  data_noise: float = 0.1
  seed: int = 0
  model: ModelConfig = ModelConfig()
  recoding: RecodingConfig = RecodingConfig()
  max_train_tokens: int = 0
  max_eval_tokens: int = 0

  def __post_init__(self):
    if self.optimizer not in ("sgd", "adam"):
      raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
    if self.lr <= 0 or self.clip <= 0 or self.bptt <= 0 or self.batch_size <= 0:
      raise ValueError("lr, clip, bptt and batch_size must be positive")
    if not 0 <= self.weight_decay < 1:
      # The author's ensemble config has 4.815e-0 (a typo for 4.815e-05); refuse such values.
      raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay}")
    if self.step_size < 0 or not math.isfinite(self.step_size):
      raise ValueError(f"step size must be finite and non-negative, got {self.step_size}")
    if self.lr_decay <= 0 or self.eval_batch_size <= 0 or self.epochs <= 0:
      raise ValueError("lr_decay, eval_batch_size and epochs must be positive")
    if min(self.decay_start, self.max_train_tokens, self.max_eval_tokens) < 0:
      raise ValueError("decay_start, max_train_tokens and max_eval_tokens must be non-negative")


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """What does not change what a run computes: where it stops, how often it saves, what it shows.

  ``override_settings`` resumes a run although its settings differ from the checkpoint's
  (settings that fix the shapes of the saved state are refused regardless).
  """

  max_steps: int = 0
  ckpt_every: int = 200
  progress: bool = True
  override_settings: bool = False

  def __post_init__(self):
    if self.max_steps < 0 or self.ckpt_every <= 0:
      raise ValueError("max_steps must be non-negative and ckpt_every positive")


@dataclasses.dataclass(frozen=True)
class Summary:
  """What ``train`` returns; ``to_dict()`` is ``summary.json`` (written when the run finished).

  ``valid_ppl`` / ``test_ppl`` (of the best checkpoint) and the timing fields are ``None`` while
  the run is unfinished (stopped by ``max_steps``). ``params`` are the last step's parameters.
  """

  run: str
  global_step: int
  history: list[dict]
  params: Any = dataclasses.field(repr=False, default=None)
  valid_ppl: float | None = None
  test_ppl: float | None = None
  epochs: int | None = None
  train_seconds: float | None = None
  train_tokens_per_s: float | None = None

  @property
  def finished(self) -> bool:
    return self.test_ppl is not None

  def to_dict(self) -> dict:
    d = {"run": self.run, "global_step": self.global_step, "history": self.history}
    if self.finished:
      for k in ("valid_ppl", "test_ppl", "epochs", "train_seconds", "train_tokens_per_s"):
        d[k] = getattr(self, k)
    return d


# --- optimizer and learning-rate schedule -------------------------------------------------------
