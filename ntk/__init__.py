"""ntk: the surrogate-gradient NTK as a neural-tangents extension that runs on current JAX.

Paper: "A generalized neural tangent kernel for surrogate gradient learning", L. Eilers,
R.-M. Memmesheimer, S. Goedeke, NeurIPS 2024 (arXiv 2405.15539).

``import ntk`` first applies a small compatibility layer (``ntk/_src/compat.py``) so that
neural-tangents 0.6.5 imports and runs on the pinned JAX without TensorFlow.

Usage::

  import ntk
  from neural_tangents import stax
  init_fn, apply_fn, kernel_fn = stax.serial(
      stax.Dense(512, 1.0, 0.1), ntk.stax.SurrogateSign("erf", beta=1.0),
      stax.Dense(512, 1.0, 0.1), ntk.stax.SurrogateSign("erf", beta=1.0),
      stax.Dense(1, 1.0, 0.1))
  k = kernel_fn(x_test, x_train, ("nngp", "ntk"))        # NNGP of sign, SG-NTK I(x_test, x_train)
  mean, cov = ntk.predict.gradient_descent_mse_sg_ensemble(kernel_fn, x_train, y_train)(
      None, x_test)                                        # GP that SGL converges to
  emp = ntk.empirical_sg_ntk_fn(apply_fn)(x1, x2, params) # J(x1) J~(x2)^T at finite width
"""

from importlib import metadata as _metadata

try:
  __version__ = _metadata.version("jaxsteer")  # one version for the distribution's four packages
except _metadata.PackageNotFoundError:  # a checkout used without `pip install`
  __version__ = "0+unknown"

from ntk._src import compat as _compat

nt = _compat.import_neural_tangents()  # neural_tangents, imported under the layer

from ntk import predict, stax  # noqa: E402
from ntk._src.empirical import checked_kernel_fn, empirical_sg_ntk_fn, sg_mlp  # noqa: E402
from ntk._src.kernels import (  # noqa: E402
  analytic_sg_ntk,
  arcsine_nngp,
  gauss_hermite_2d,
  naive_dot,
  sg_dot,
)
from ntk._src.surrogates import (  # noqa: E402
  SURROGATES,
  SurrogateDerivative,
  get_surrogate,
  register_surrogate,
)

__all__ = [
  "__version__",
  "SURROGATES",
  "SurrogateDerivative",
  "analytic_sg_ntk",
  "arcsine_nngp",
  "checked_kernel_fn",
  "empirical_sg_ntk_fn",
  "gauss_hermite_2d",
  "get_surrogate",
  "naive_dot",
  "nt",
  "predict",
  "register_surrogate",
  "sg_dot",
  "sg_mlp",
  "stax",
]
