"""The optimizer and learning-rate schedule of ``recoder.train``, in optax.

The optimizer is ``clip -> weight decay -> (Adam) -> learning rate`` with the learning rate
injected by ``optax.inject_hyperparams``: it lives in the optimizer state, is checkpointed with it
and changes without recompiling the training step. ``PlateauRule`` is the schedule: after every
epoch it reads the validation perplexity and says whether to reduce the learning rate (Zaremba et
al. 2014 / PyTorch word_language_model: / 4 after an epoch without improvement).

Usage::

  tx = make_optimizer(config)                # config: lr, clip, weight_decay, optimizer
  opt_state = tx.init(params)
  rule = PlateauRule(factor=0.25)
  plateau = rule.init()
  ...                                        # an epoch of tx.update steps
  plateau, improved, reduce = rule.update(plateau, valid_ppl)
  if reduce:
    opt_state = with_learning_rate(opt_state, learning_rate(opt_state) * rule.factor)
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["PlateauRule", "PlateauState", "learning_rate", "make_optimizer", "with_learning_rate"]


def make_optimizer(tc) -> optax.GradientTransformationExtraArgs:
  """clip -> weight decay (LM params only) -> (Adam scaling) -> learning rate.

  The learning rate is injected (``optax.inject_hyperparams``): it is part of the state
  (``learning_rate(state)``, ``with_learning_rate(state, lr)``), changes without recompiling and
  is checkpointed with the state.
  """

  def decay_mask(p):
    return {
      "lm": jax.tree_util.tree_map(lambda _: True, p["lm"]),
      "step": jax.tree_util.tree_map(lambda _: False, p["step"]),
    }

  def chain(learning_rate):
    parts = [optax.clip_by_global_norm(tc.clip)]
    if tc.weight_decay > 0:
      parts.append(optax.add_decayed_weights(tc.weight_decay, mask=decay_mask))
    if tc.optimizer == "adam":
      parts.append(optax.scale_by_adam())
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)

  return optax.inject_hyperparams(chain, hyperparam_dtype=jnp.float32)(learning_rate=tc.lr)


def learning_rate(opt_state) -> float:
  """The learning rate held by a ``make_optimizer`` state."""
  return float(opt_state.hyperparams["learning_rate"])


def with_learning_rate(opt_state, lr: float):
  """A copy of a ``make_optimizer`` state with another learning rate (same dtype: no recompile)."""
  return opt_state._replace(
    hyperparams={**opt_state.hyperparams, "learning_rate": jnp.asarray(lr, jnp.float32)}
  )


class PlateauState(NamedTuple):
  """Host-side state of ``PlateauRule`` (float64, so decisions match Python floats exactly)."""

  best: np.ndarray  # lowest validation value so far; +inf before the first one
  num_bad: np.ndarray  # validations without improvement since the last reduction
  epoch: np.ndarray  # validations seen


@dataclasses.dataclass(frozen=True)
class PlateauRule:
  """Reduce the learning rate when the validation value stops improving.

  After each validation ``value``: it improves when ``value < best * (1 - threshold)``; after
  ``patience`` validations in a row without improvement the learning rate is multiplied by
  ``factor``; with ``decay_start > 0`` it is also multiplied after every epoch ``>=
  decay_start`` (at most once per epoch). The defaults of ``recoder.train`` are patience 1 and
  threshold 0: a reduction after every epoch whose perplexity is not strictly lower than the best.
  Like ``optax.contrib.reduce_on_plateau``, but decided once per epoch on the validation value
  (that one wants a value at every update and a positive tolerance) and with ``decay_start``.
  """

  factor: float = 0.25
  patience: int = 1
  threshold: float = 0.0
  decay_start: int = 0

  def __post_init__(self):
    if not self.factor > 0 or self.patience < 1 or not 0 <= self.threshold < 1:
      raise ValueError(
        f"need factor > 0, patience >= 1 and threshold in [0, 1); got {self.factor}, "
        f"{self.patience}, {self.threshold}"
      )

  @classmethod
  def from_config(cls, tc) -> PlateauRule:
    """The rule of a ``TrainConfig``: factor ``lr_decay``, patience 1, threshold 0."""
    return cls(factor=tc.lr_decay, patience=1, threshold=0.0, decay_start=tc.decay_start)

  def init(self) -> PlateauState:
    return PlateauState(np.float64(np.inf), np.int64(0), np.int64(0))

  def update(self, state: PlateauState, value: float) -> tuple[PlateauState, bool, bool]:
    """``(new_state, improved, reduce)`` after one validation."""
    value = float(value)
    best = float(state.best)
    improved = value < best * (1.0 - self.threshold)
    num_bad = 0 if improved else int(state.num_bad) + 1
    plateau = num_bad >= self.patience
    epoch = int(state.epoch) + 1
    scheduled = self.decay_start > 0 and epoch >= self.decay_start
    new = PlateauState(
      np.float64(value if improved else best), np.int64(0 if plateau else num_bad), np.int64(epoch)
    )
    return new, improved, plateau or scheduled
