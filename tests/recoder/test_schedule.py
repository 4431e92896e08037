"""The learning-rate schedule of ``recoder.train``: the plateau rule makes the decisions of the
previous hand-written schedule, and matches ``optax.contrib.reduce_on_plateau`` where the two
overlap; the learning rate lives in the optimizer state."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

from recoder._src import train as train_lib

# Validation perplexities: improvements, a tie (not an improvement), rises, values less than a
# float32 ulp below the best (improvements in float64 that float32 would call ties).
SCRIPTS = [
  [300.0, 250.0, 250.0, 260.0, 240.0, 239.5, 245.0, 238.0],
  [120.0, 121.0, 122.0, 119.0, 119.0 - 1e-6, 119.0 - 2e-6, 150.0, 100.0],
  [80.0, 70.0, 60.0, 50.0, 40.0, 30.0],
]


def previous_schedule(vals, *, lr, lr_decay, decay_start):
  """The loop of the previous ``recoder.train`` (written out again): lr per epoch and whether
  the epoch improved (saved as best)."""
  best, out = None, []
  for epoch, v in enumerate(vals):
    improved = best is None or v < best
    out.append((lr, improved))
    if improved:
      best = v
    if not improved or (decay_start and epoch + 1 >= decay_start):
      lr *= lr_decay
  return out


@pytest.mark.parametrize("decay_start", [0, 1, 3])
@pytest.mark.parametrize("script", range(len(SCRIPTS)))
def test_plateau_rule_makes_the_previous_schedules_decisions(script, decay_start):
  vals = SCRIPTS[script]
  tc = train_lib.TrainConfig(lr=20.0, lr_decay=0.25, decay_start=decay_start)
  rule = train_lib.PlateauRule.from_config(tc)
  run = types.SimpleNamespace(rule=rule)
  tx = train_lib.make_optimizer(tc)
  state = {"opt_state": tx.init({"w": jnp.zeros(2)}), "plateau": rule.init()}
  meta = {"epoch": 0, "batch": 0, "history": [], "train_seconds": 0.0}
  got = []
  for v in vals:
    state, meta, improved = train_lib.end_epoch(run, state, meta, v)
    got.append((meta["history"][-1]["lr"], improved))
  assert got == previous_schedule(vals, lr=20.0, lr_decay=0.25, decay_start=decay_start)
  want_next = previous_schedule([*vals, math.inf], lr=20.0, lr_decay=0.25, decay_start=decay_start)
  assert train_lib.learning_rate(state["opt_state"]) == want_next[-1][0]  # in the optimizer state
  assert meta["epoch"] == len(vals) and [h["epoch"] for h in meta["history"]] == [
    i + 1 for i in range(len(vals))
  ]


@pytest.mark.parametrize("patience, threshold", [(1, 0.01), (2, 0.01), (3, 0.05)])
def test_plateau_rule_agrees_with_optax_reduce_on_plateau(patience, threshold):
  vals = [10.0, 9.0, 8.95, 8.99, 8.5, 8.49, 8.48, 8.47, 9.0, 7.0, 7.0, 7.0, 6.9, 6.0]
  rule = train_lib.PlateauRule(factor=0.5, patience=patience, threshold=threshold)
  ref = optax.contrib.reduce_on_plateau(factor=0.5, patience=patience, rtol=threshold, atol=0.0)
  ref_state = ref.init(jnp.zeros((), jnp.float32))
  ref_update = jax.jit(lambda s, v: ref.update(jnp.zeros(()), s, value=v)[1])
  state, scale = rule.init(), 1.0
  for v in vals:
    ref_state = ref_update(ref_state, jnp.float32(v))
    state, _, reduce = rule.update(state, v)
    scale *= rule.factor if reduce else 1.0
    assert scale == float(ref_state.scale), v
    assert float(state.best) == pytest.approx(float(ref_state.best_value))


def test_plateau_rule_rejects_bad_settings_and_starts_from_infinity():
  with pytest.raises(ValueError, match="patience"):
    train_lib.PlateauRule(patience=0)
  with pytest.raises(ValueError, match="threshold"):
    train_lib.PlateauRule(threshold=1.0)
  s = train_lib.PlateauRule().init()
  assert s.best == np.inf and s.best.dtype == np.float64 and int(s.num_bad) == int(s.epoch) == 0


def test_learning_rate_is_applied_from_the_optimizer_state():
  # SGD step by hand: p - lr * clip(g); the lr comes from the state, not from the config.
  tc = train_lib.TrainConfig(lr=20.0, clip=100.0)
  tx = train_lib.make_optimizer(tc)
  params = {"lm": {"w": jnp.array([1.0, 2.0])}, "step": {}}
  grads = {"lm": {"w": jnp.array([0.5, -1.0])}, "step": {}}
  state = train_lib.with_learning_rate(tx.init(params), 0.125)
  updates, state = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["lm"]["w"], np.array([1.0 - 0.0625, 2.0 + 0.125], np.float32))
  assert train_lib.learning_rate(state) == 0.125
