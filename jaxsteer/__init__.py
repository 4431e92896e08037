"""jaxsteer: GrAInS steering (Nguyen et al., 2025) and a Flax model zoo for it.

>>> import jaxsteer
>>> lm = jaxsteer.load("path/to/hf_dir_or_llama2c.bin")  # doctest: +SKIP
"""

from jaxsteer import models as models
from jaxsteer.models import LanguageModel as LanguageModel
from jaxsteer.models import load as load

__all__ = ["LanguageModel", "load", "models"]
