"""Settings of the ``models`` study: load the default model and generate (the foundation check).

Command::

  python -m experiments.reproduce --quick --only models       # about 10 s on 2 CPU cores
  python -m experiments.reproduce --quick --only models --model meta-llama/Llama-3.2-1B  # online

Expected headline (quick, stories260K): 260032 parameters; 32 greedy tokens from "Once upon a
time" (the decoding matches llama2.c's, see tests/jaxsteer/test_models.py) in about 8 s including
compilation.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
  """What to load and how much to generate.

  Attributes:
    model: checkpoint path or hub id for ``jaxsteer.load`` (None: stories260K from the data dir).
    tokenizer: tokenizer path for llama2.c checkpoints (None: tok512.bin beside stories260K).
    prompt: the generation prompt.
    max_new_tokens: greedy tokens to generate.
  """

  model: str | None = None
  tokenizer: str | None = None
  prompt: str = "Once upon a time"
  max_new_tokens: int = 128

  @classmethod
  def smoke(cls) -> Config:
    return cls(max_new_tokens=4)

  @classmethod
  def quick(cls) -> Config:
    return cls(max_new_tokens=32)

  @classmethod
  def full(cls) -> Config:
    return cls()
