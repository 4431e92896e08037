"""Settings of the PaCA study (``experiments/paca/run.py``).

Command::

  python -m experiments.reproduce --quick --only paca        # about 2 minutes on 2 CPU cores (quiet)
  python -m experiments.paca.run --out runs/paca             # full, about 15 minutes

Expected headline: the verdicts in ``experiments/results/quick/REPORT.md`` (quick: 60
pre-training and 40 fine-tuning steps, learning rate per method chosen from 3e-3/1e-2/3e-2/1e-1
on 32 validation sequences, 2 fine-tuning seeds, 32 test sequences; full: 600/300 steps, 6 rates
from 3e-4 to 1e-1, 3 seeds). A chosen rate at either end of a grid is marked in the results
(``at_grid_edge``). With the quick grids 1e-3..1e-2 and 1e-3..3e-2 the adapters chose the top
rate; with 3e-3..1e-1 (the published run) LoRA and the three PaCA variants choose 3e-2 and full
fine-tuning 1e-2, all inside the grid.
Runtime: 25 trainings of 40 steps (5 methods x 4 rates, then 5 at the second seed); 114 s on one
pinned core of the quiet 2-core machine (24 minutes at load average 11-17, compile-bound).
"""

from __future__ import annotations

import dataclasses

METHODS = ("lora", "paca", "paca_int8", "paca_rk", "full")


@dataclasses.dataclass(frozen=True)
class Config:
  """Pre-training and fine-tuning sizes.

  Attributes:
    pretrain_steps: full-fine-tuning steps on the first half of tinyshakespeare (the base model).
    finetune_steps: steps of each method on the second half.
    k: LoRA rank; PaCA gets 2k rows (about the same trainable parameters) and also k.
    batch: sequences per step.
    seq: bytes per sequence.
    eval_batches: held-out batches for the eval loss.
    methods: subset of ``METHODS``.
    seed: pre-training seed (the base model).
    seeds: fine-tuning seeds (data order, adapter initialisation, PaCA's random rows).
    lrs: learning rates tried per method (Adam); each method's is chosen on the validation
      windows with the first seed, then every seed is trained at it and reported on test.
  """

  pretrain_steps: int = 600
  finetune_steps: int = 300
  k: int = 8
  batch: int = 8
  seq: int = 64
  eval_batches: int = 4
  methods: tuple[str, ...] = METHODS
  seed: int = 0
  seeds: tuple[int, ...] = (0, 1, 2)
  lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)

  @classmethod
  def smoke(cls) -> Config:
    return cls(
      pretrain_steps=2,
      finetune_steps=4,
      k=2,
      eval_batches=1,
      methods=("lora", "paca"),
      seeds=(0,),
      lrs=(1e-3, 3e-3),
    )

  @classmethod
  def quick(cls) -> Config:
    return cls(
      pretrain_steps=60, finetune_steps=40, k=4, seeds=(0, 1), lrs=(3e-3, 1e-2, 3e-2, 1e-1)
    )

  @classmethod
  def full(cls) -> Config:
    return cls()
