"""The PaCA study's validation split and learning-rate choice (``experiments/paca/run.py``)."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from experiments.paca.run import choose_lr, split  # noqa: E402


def test_split_is_disjoint_ordered_and_complete():
  tokens = np.arange(1000)
  pre, train, val, test = split(tokens)
  np.testing.assert_array_equal(np.concatenate([pre, train, val, test]), tokens)
  assert len(pre) == 500 and len(train) == 400 and len(val) == 50 and len(test) == 50
  assert train.max() < val.min() and val.max() < test.min()  # no window crosses the ranges


def test_choose_lr_takes_the_lowest_validation_loss():
  assert choose_lr({1e-3: 3.2, 3e-3: 3.1, 1e-2: 3.3}) == 3e-3
  assert choose_lr({1e-2: 3.0, 1e-3: 3.0}) == 1e-3  # tie: the smaller rate


def test_choose_lr_never_picks_a_diverged_run():
  assert choose_lr({1e-3: 3.2, 1e-2: float("nan"), 3e-2: float("-inf")}) == 1e-3
  with pytest.raises(ValueError, match="no learning rate with a finite"):
    choose_lr({1e-2: float("nan")})
  with pytest.raises(ValueError, match="no learning rate"):
    choose_lr({})
