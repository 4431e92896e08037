"""Integrated Gradients and contrastive token attribution (GrAInS step 1).

>>> from jaxsteer import attribution
>>> res = attribution.contrastive(lm, "Q: ...\\nA:", "true answer", "false answer")  # doctest: +SKIP
>>> res.plot("scores.png")  # doctest: +SKIP
"""

from jaxsteer._src.attribution import BASELINES as BASELINES
from jaxsteer._src.attribution import ON_UNCONVERGED as ON_UNCONVERGED
from jaxsteer._src.attribution import QUADRATURE as QUADRATURE
from jaxsteer._src.attribution import ContrastiveAttribution as ContrastiveAttribution
from jaxsteer._src.attribution import IGConvergenceError as IGConvergenceError
from jaxsteer._src.attribution import IGConvergenceWarning as IGConvergenceWarning
from jaxsteer._src.attribution import IGResult as IGResult
from jaxsteer._src.attribution import baseline_embeddings as baseline_embeddings
from jaxsteer._src.attribution import contrastive as contrastive
from jaxsteer._src.attribution import integrated_gradients as integrated_gradients
from jaxsteer._src.attribution import quadrature as quadrature
from jaxsteer._src.attribution import response_logprob as response_logprob
from jaxsteer._src.attribution import response_width as response_width
from jaxsteer._src.attribution import sequence_logprob as sequence_logprob

__all__ = [
  "BASELINES",
  "ON_UNCONVERGED",
  "QUADRATURE",
  "ContrastiveAttribution",
  "IGConvergenceError",
  "IGConvergenceWarning",
  "IGResult",
  "baseline_embeddings",
  "contrastive",
  "integrated_gradients",
  "quadrature",
  "response_logprob",
  "response_width",
  "sequence_logprob",
]
