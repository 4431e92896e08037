"""GrAInS steering vectors (Nguyen et al., 2025): ``fit``, the CAA baseline, ``SteeringVectors``.

>>> from jaxsteer import grains
>>> vecs = grains.fit(lm, pairs, layers=[3], k=10, steps=20)  # doctest: +SKIP
>>> steered = jaxsteer.steer(lm, vecs, alpha=4.0)  # doctest: +SKIP
"""

from jaxsteer._src.grains import AGGREGATORS as AGGREGATORS
from jaxsteer._src.grains import CANDIDATES as CANDIDATES
from jaxsteer._src.grains import CaptureInterceptor as CaptureInterceptor
from jaxsteer._src.grains import Pair as Pair
from jaxsteer._src.grains import SteeringVectors as SteeringVectors
from jaxsteer._src.grains import aggregate_pca_checked as aggregate_pca_checked
from jaxsteer._src.grains import attribute_pairs as attribute_pairs
from jaxsteer._src.grains import caa as caa
from jaxsteer._src.grains import fit as fit
from jaxsteer._src.grains import hidden_last as hidden_last
from jaxsteer._src.grains import is_steering_vectors_save as is_steering_vectors_save
from jaxsteer._src.grains import special_ids as special_ids

__all__ = [
  "AGGREGATORS",
  "CANDIDATES",
  "CaptureInterceptor",
  "Pair",
  "aggregate_pca_checked",
  "attribute_pairs",
  "is_steering_vectors_save",
  "special_ids",
  "SteeringVectors",
  "caa",
  "fit",
  "hidden_last",
]
