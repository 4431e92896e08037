"""GrAInS steering vectors (Nguyen et al., 2025): ``fit``, the CAA baseline, ``SteeringVectors``.

>>> from jaxsteer import grains
>>> vecs = grains.fit(lm, pairs, layers=[3], k=10, steps=20)  # doctest: +SKIP
>>> steered = jaxsteer.steer(lm, vecs, alpha=4.0)  # doctest: +SKIP
"""

from jaxsteer._src.grains import AGGREGATORS as AGGREGATORS
from jaxsteer._src.grains import CaptureInterceptor as CaptureInterceptor
from jaxsteer._src.grains import Pair as Pair
from jaxsteer._src.grains import SteeringVectors as SteeringVectors
from jaxsteer._src.grains import caa as caa
from jaxsteer._src.grains import fit as fit
from jaxsteer._src.grains import hidden_last as hidden_last

__all__ = [
  "AGGREGATORS",
  "CaptureInterceptor",
  "Pair",
  "SteeringVectors",
  "caa",
  "fit",
  "hidden_last",
]
