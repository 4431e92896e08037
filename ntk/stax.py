"""Surrogate-gradient activation layers for ``neural_tangents.stax.serial`` (see ntk/_src/stax.py).

Paper: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers et al.,
NeurIPS 2024).

Usage::

  from neural_tangents import stax
  from ntk.stax import SurrogateSign
  _, apply_fn, kernel_fn = stax.serial(stax.Dense(512), SurrogateSign("erf"), stax.Dense(1))
"""

from ntk._src.stax import SURROGATE_KWARG, Surrogate, SurrogateErf, SurrogateSign

__all__ = ["SURROGATE_KWARG", "Surrogate", "SurrogateErf", "SurrogateSign"]
