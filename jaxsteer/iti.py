"""ITI (Li et al., 2023): per-head probes, top-K heads, mass-mean shift, applied by ``steer``.

>>> from jaxsteer import iti
>>> vecs = iti.fit(lm, pairs, k=16)  # doctest: +SKIP
>>> jaxsteer.steer(lm, vecs, alpha=15.0).generate("Q: ...\\nA:")  # doctest: +SKIP
"""

from jaxsteer._src.iti import fit as fit
from jaxsteer._src.iti import head_activations as head_activations

__all__ = ["fit", "head_activations"]
