"""Settings of the recoding study (``experiments/recoder/run.py``).

Command::

  python -m experiments.reproduce --quick --only recoder     # about 5-6 minutes on 2 CPU cores
  python -m experiments.recoder.run --out runs/recoder       # full: the documented 2x200 PTB run

Expected headline: quick (32-unit LSTM, 40k PTB tokens, 4,000 test tokens) test perplexity about
870 for the plain model (869.7), 866.7 with surprisal recoding at eta 2, 992 with entropy recoding.
Full (2x200, 4 epochs; ``results/ptb_small_*.json``): test 115.2, 115.0 with surprisal recoding.
"""

from __future__ import annotations

import dataclasses

RUNS = ("baseline", "ensemble_k3", "surprisal_learned")
VARIANTS = (
  "none",
  "surprisal:0.5",
  "surprisal:2",
  "ptok_ppl:5",
  "entropy:0.5",
  "mc_entropy:0.5:S=5",
  "mc_variance:5:S=5",
)
GARDEN_PATH_VARIANTS = (
  "baseline",
  "surprisal eta=0.1 (tuned)",
  "surprisal eta=1",
  "entropy eta=0.03",
)


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes of the trained-here LSTMs (``mode="quick"``) or the documented run (``"full"``).

  Attributes:
    mode: "quick" trains small models here; "full" reports the committed 2x200 PTB results and
      re-plots the garden-path figure from ``$RECODER_RUN`` (default ``runs/ptb_small``) if present.
    hidden: embedding and LSTM width.
    max_train_tokens: PTB training prefix.
    max_eval_tokens: validation prefix used during training.
    test_tokens: test prefix for the recoding variants.
    runs: which models to train (subset of ``RUNS``).
    variants: recoding variants evaluated on the baseline model.
    garden_path_variants: curves of the garden-path surprisal figure.
    seed: training seed.
  """

  mode: str = "full"
  hidden: int = 32
  max_train_tokens: int = 40000
  max_eval_tokens: int = 4000
  test_tokens: int = 4000
  runs: tuple[str, ...] = RUNS
  variants: tuple[str, ...] = VARIANTS
  garden_path_variants: tuple[str, ...] = GARDEN_PATH_VARIANTS
  seed: int = 0

  @classmethod
  def smoke(cls) -> Config:
    return cls(
      mode="quick",
      hidden=8,
      max_train_tokens=1500,
      max_eval_tokens=400,
      test_tokens=400,
      runs=("baseline",),
      variants=("none", "surprisal:0.5"),
      garden_path_variants=GARDEN_PATH_VARIANTS[:2],
    )

  @classmethod
  def quick(cls) -> Config:
    return cls(mode="quick")

  @classmethod
  def full(cls) -> Config:
    return cls(mode="full")
