"""Settings of the SG-NTK study (``experiments/sgntk/run.py``).

Command::

  python -m experiments.reproduce --quick --only sgntk       # about 3-5 minutes on 2 CPU cores
  python -m experiments.sgntk.run --out experiments/sgntk/results   # Config.full(), about 30 min

Expected headline (full; ``results/summary.json``): the empirical SG-NTK approaches the analytic
I_erf_m with a log-log MSE slope of about -0.9 in width; I_erf_m(x, x) -> I_sign = 2.49 while the
naive NTK diagonal grows like m^2; digits accuracy SG-NTK GP 0.968, NNGP 0.965, SGL ensemble 0.899.
Quick (about 3-5 minutes): slope -0.92 (m = 2), I_erf_m(x, x) at m = 1000 2.490 vs I_sign 2.491,
RMSE of the width-100 SGL ensemble to the SG-NTK GP mean 0.138 vs 0.158 to the NNGP mean,
digits SG-NTK GP 0.925, SGL ensemble 0.648.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes of every part (``quick()`` / ``full()`` / ``smoke()``; class defaults: the paper's)."""

  kernel_widths: tuple[int, ...] = (10, 100, 500, 1000)
  kernel_ms: tuple[float, ...] = (2.0, 5.0, 20.0)
  kernel_nets: int = 10
  fig1_steps: int = 10000
  fig2_steps: int = 1000
  gp_widths: tuple[int, ...] = (20, 100, 500)
  gp_ensemble: int = 500
  gp_steps: int = 30000
  digits_train: int = 500
  digits_width: int = 512
  digits_ensemble: int = 4
  digits_steps: int = 2000
  digits_lr: float = 1.0
  digits_test: int | None = None  # cap on test points (None: all remaining digits)
  naive_ms: tuple[float, ...] = (2.0, 5.0, 20.0, 100.0, 1000.0, 10000.0)

  @classmethod
  def smoke(cls) -> Config:
    """One or a few steps of everything (tests)."""
    return cls(
      kernel_widths=(8,),
      kernel_ms=(2.0,),
      kernel_nets=1,
      fig1_steps=3,
      fig2_steps=3,
      gp_widths=(8,),
      gp_ensemble=2,
      gp_steps=5,
      digits_train=40,
      digits_width=16,
      digits_ensemble=2,
      digits_steps=3,
      digits_test=50,
      naive_ms=(2.0, 100.0),
    )

  @classmethod
  def quick(cls) -> Config:
    return cls(
      kernel_widths=(10, 100, 300),
      kernel_ms=(2.0, 20.0),
      kernel_nets=2,
      fig1_steps=200,
      fig2_steps=200,
      gp_widths=(20, 100),
      gp_ensemble=16,
      gp_steps=3000,
      digits_train=200,
      digits_width=256,
      digits_ensemble=4,
      digits_steps=400,
    )

  @classmethod
  def full(cls) -> Config:
    """What this repository ran on 2 shared CPU cores (the paper's sizes are the class defaults)."""
    return cls(
      kernel_widths=(10, 100, 500, 1000),
      kernel_ms=(2.0, 5.0, 20.0),
      kernel_nets=2,
      fig1_steps=500,
      fig2_steps=500,
      gp_widths=(20, 100, 500),
      gp_ensemble=16,
      gp_steps=3000,
      digits_train=500,
      digits_width=256,
      digits_ensemble=4,
      digits_steps=1000,
    )
