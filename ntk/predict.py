"""Predictions of surrogate gradient learning for non-symmetric SG-NTKs (see ntk/_src/predict.py).

Paper: "A generalized neural tangent kernel for surrogate gradient learning" (Eilers et al.,
NeurIPS 2024).

Usage::

  import ntk
  mean, cov = ntk.predict.gradient_descent_mse_sg_ensemble(kernel_fn, x_train, y_train)(
      t=None, x_test=x_test)
"""

from ntk._src.predict import check_convergent, gp_moments, gradient_descent_mse_sg_ensemble

__all__ = ["check_convergent", "gp_moments", "gradient_descent_mse_sg_ensemble"]
