"""jaxsteer: GrAInS steering (Nguyen et al., 2025) and a Flax model zoo for it.

>>> import jaxsteer
>>> lm = jaxsteer.load("path/to/hf_dir_or_llama2c.bin")  # doctest: +SKIP
>>> vecs = jaxsteer.grains.fit(lm, pairs, layers=[3])  # doctest: +SKIP
>>> jaxsteer.steer(lm, vecs, alpha=4.0).generate("Once upon a time")  # doctest: +SKIP
"""

from importlib import metadata as _metadata

try:
  __version__ = _metadata.version("jaxsteer")  # one version for the distribution's four packages
except _metadata.PackageNotFoundError:  # a checkout used without `pip install`
  __version__ = "0+unknown"

from jaxsteer import attribution as attribution
from jaxsteer import compile_options as compile_options
from jaxsteer import evals as evals
from jaxsteer import grains as grains
from jaxsteer import iti as iti
from jaxsteer import models as models
from jaxsteer._src.steering import steer as steer
from jaxsteer.models import LanguageModel as LanguageModel
from jaxsteer.models import load as load

__all__ = [
  "__version__",
  "LanguageModel",
  "attribution",
  "compile_options",
  "evals",
  "grains",
  "iti",
  "load",
  "models",
  "steer",
]
