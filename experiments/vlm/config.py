"""Settings of the vision-language GrAInS study (``experiments/vlm/study.py``).

Command::

  python -m experiments.reproduce --quick --only vlm     # about 2 minutes on 2 CPU cores
  python -m experiments.vlm.run --out runs/vlm           # full settings, about 6 minutes

A toy LLaVA (a CLIP tower trained here + the pretrained stories260K language model) learns to name
the colour of a box in an image, and to answer "blue" whenever a trigger sentence precedes the
question (a text prior that overrides the image: a hallucination).

Expected headline (full run, ``experiments/vlm/results/vlm.json``): the trigger is the most
negative text token in every attributed pair (1.0); 0.32 of the 5 most positive image tokens lie on
the box (chance 0.125); unsteered hallucination rate 1.0 on triggered items and 0.0 on clean
ones. No steering method fixes the triggered items without breaking clean ones: GrAInS (pos) at
alpha 2 gives 0.66 / 0.50, CAA 0.66 / 0.60 (target / clean). The quick run trains for 120 steps and
evaluates fewer items with fewer IG steps.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of the study (``quick`` shrinks training and evaluation)."""

  image_size: int = 84
  patch_size: int = 14
  vision_hidden: int = 64
  vision_layers: int = 2
  train_steps: int = 500
  batch: int = 16
  lr: float = 2e-3
  p_trigger: float = 0.3
  n_pairs: int = 24
  n_eval: int = 96
  n_attr: int = 12
  steer_layer: int = 3
  alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0)
  k: int = 10
  steps: int = 64  # IG steps of the fits
  attr_steps: int = 256  # IG steps of the attribution measurements (16 steps: error > 100%)
  seed: int = 0

  @classmethod
  def quick(cls) -> Config:
    return cls(
      train_steps=120, n_pairs=6, n_eval=24, n_attr=3, alphas=(0.0, 2.0), steps=32, attr_steps=128
    )

  @classmethod
  def full(cls) -> Config:
    return cls()

  @classmethod
  def smoke(cls) -> Config:
    return cls(
      train_steps=2, batch=4, n_pairs=2, n_eval=4, n_attr=1, alphas=(1.0,), steps=4, attr_steps=4
    )
