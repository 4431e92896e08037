"""Settings of the GrAInS study (``experiments/grains/run.py``).

Command::

  python -m experiments.reproduce --quick --only grains      # about 2-4 minutes on 2 CPU cores
  python -m experiments.grains.run --out runs/grains         # full sweeps, about 15-30 minutes
  python -m experiments.reproduce --only grains --model meta-llama/Llama-3.1-8B-Instruct  # online

Expected headline (quick): contrastive IG ranks the planted trigger first in 0.44 of the pairs
(chance 0.125); GrAInS at layer 0, alpha 16 makes every triggered key-A item answer A (1.0; clean
key-B items flip too: 0.0) while CAA moves none (0.0). stories260K, layer 3, alpha 0.3 (24 tokens,
10 IG steps): sentiment 3.6 (GrAInS) and 8.4 (CAA) vs 10.5 unsteered, so the quick size does not
show the full run's gain (GrAInS 12.7-19.3 vs 8.7 with 48 tokens and 20 IG steps; README.md).
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
      ),
      stories=StoriesConfig(
        layers=(3,), alphas=(0.3,), max_new_tokens=4, k=1, steps=2, n_pairs=2, n_prompts=2
      ),
      heatmap_steps=2,
    )

  @classmethod
  def quick(cls) -> Config:
    return cls(
      synthetic=SyntheticConfig(
        train_steps=200, n_pairs=16, n_eval=64, steer_layers=(0,), alphas=(0.0, 8.0, 16.0), steps=10
      ),
      stories=StoriesConfig(layers=(3,), alphas=(0.0, 0.3, 1.0), max_new_tokens=24, steps=10),
      heatmap_steps=10,
    )

  @classmethod
  def full(cls) -> Config:
    return cls()
