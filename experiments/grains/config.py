"""Settings of the GrAInS study (``experiments/grains/run.py``).

Command::

  python -m experiments.reproduce --quick --only grains      # about 3-6 minutes on 2 CPU cores
  python -m experiments.grains.run --out runs/grains         # full sweeps, about 15-30 minutes
  python -m experiments.reproduce --only grains --model meta-llama/Llama-3.1-8B-Instruct  # online

Expected headline: see the verdicts in ``experiments/results/quick/REPORT.md`` (quick) and
``experiments/grains/README.md`` (tables generated from the JSON by ``python -m experiments.tables``).
Quick: synthetic task with 2 seeds (full: 3), 64 (full: 200) test items per group, alpha/layer
chosen on separate validation items; stories260K with 24 fitting pairs, 12 validation and 48 test
openings, layers 2-3 (full: 1-4), 24 (full: 48) generated tokens, 10 (full: 20) IG steps.
"""

from __future__ import annotations

import dataclasses

from experiments.grains.stories import StoriesConfig
from experiments.grains.synthetic import SyntheticConfig


@dataclasses.dataclass(frozen=True)
class Config:
  """Both GrAInS experiments.

  Attributes:
    synthetic: the controlled trigger benchmark (a model trained here; needs no data).
    stories: sentiment steering of a real model (None: skip).
    model: checkpoint path or hub id for the stories part (None: stories260K from the data dir).
    tokenizer: tokenizer path for llama2.c checkpoints (None: tok512.bin beside stories260K).
    heatmap_steps: IG steps of the attribution heatmap written as ``attribution.png``.
  """

  synthetic: SyntheticConfig = SyntheticConfig()
  stories: StoriesConfig | None = StoriesConfig()
  model: str | None = None
  tokenizer: str | None = None
  heatmap_steps: int = 20

  @classmethod
  def smoke(cls) -> Config:
    return cls(
      synthetic=SyntheticConfig(
        layers=1,
        train_steps=2,
        batch=8,
        n_pairs=2,
        n_eval=4,
        steer_layers=(0,),
        alphas=(4.0,),
        steps=2,
        seeds=(0,),
      ),
      stories=StoriesConfig(
        layers=(3,),
        alphas=(0.3,),
        iti_alphas=(1.0,),
        max_new_tokens=4,
        k=1,
        steps=2,
        n_pairs=2,
        n_val=2,
        n_test=2,
      ),
      heatmap_steps=2,
    )

  @classmethod
  def quick(cls) -> Config:
    return cls(
      synthetic=SyntheticConfig(
        train_steps=200,
        n_pairs=16,
        n_eval=64,
        steer_layers=(0,),
        alphas=(4.0, 8.0, 16.0),
        steps=10,
        seeds=(0, 1),
      ),
      stories=StoriesConfig(layers=(2, 3), alphas=(0.1, 0.3, 0.5), max_new_tokens=24, steps=10),
      heatmap_steps=10,
    )

  @classmethod
  def full(cls) -> Config:
    return cls()
