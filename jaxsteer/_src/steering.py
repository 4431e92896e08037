"""Norm-preserving residual-stream steering through ``flax.linen.intercept_methods``.

GrAInS (Nguyen et al., 2025) adds a steering vector to the output of chosen decoder layers and
rescales each token back to its original norm:

  h' = (h + alpha v) * |h| / |h + alpha v|        (per token, over the hidden dimension)

The interceptor wraps ``DecoderLayer.__call__`` of the chosen layers; it is entered inside the
jitted forward, with the vectors and alpha as traced arguments (no recompilation when they change).

  >>> steered = jaxsteer.steer(lm, vectors, alpha=4.0)  # doctest: +SKIP
  >>> steered.generate("Once upon a time", max_new_tokens=32)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxsteer._src.models.modules import DecoderLayer


def norm_preserving_add(h, v, alpha, normalize: bool = True):
  """``(h + alpha v) * |h| / |h + alpha v|`` per token (float32 math, result in ``h.dtype``)."""
  hf = h.astype(jnp.float32)
  hs = hf + alpha * v.astype(jnp.float32)
  if not normalize:
    return hs.astype(h.dtype)
  n_h = jnp.linalg.norm(hf, axis=-1, keepdims=True)
  n_s = jnp.linalg.norm(hs, axis=-1, keepdims=True)
  return (hs * (n_h / jnp.maximum(n_s, jnp.finfo(jnp.float32).tiny))).astype(h.dtype)


@dataclasses.dataclass(frozen=True)
class SteerInterceptor:
  """Static part of a steering intervention (hashable; a jit static argument).

  Calling it with the traced ``args`` (``{"vectors": (L, D), "alpha": (L,)}``) returns the Flax
  interceptor function.
  """

  layers: tuple[int, ...]
  normalize: bool = True

  def __call__(self, args):
    index = {f"layers_{layer}": j for j, layer in enumerate(self.layers)}

    def interceptor(next_fun, fargs, fkwargs, context):
      module = context.module
      if context.method_name != "__call__" or not isinstance(module, DecoderLayer):
        return next_fun(*fargs, **fkwargs)
      j = index.get(module.name)
      if j is None:
        return next_fun(*fargs, **fkwargs)
      h = next_fun(*fargs, **fkwargs)
      return norm_preserving_add(h, args["vectors"][j], args["alpha"][j], self.normalize)

    return interceptor


def steer(lm, vectors, alpha=1.0, *, layers=None, normalize: bool = True):
  """A ``LanguageModel`` that steers ``lm``'s residual stream with ``vectors``.

  Args:
    lm: the model (a ``LanguageModel``).
    vectors: a ``SteeringVectors`` or a mapping ``{layer: (D,) vector}``.
    alpha: strength, a scalar or one value per layer (traced: changing it recompiles nothing).
    layers: optionally a subset of the vectors' layers to apply.
    normalize: keep each token's norm (GrAInS); ``False`` gives plain addition (ActAdd/CAA).

  Returns:
    A ``LanguageModel`` with the same interface (forward, ``generate`` with KV cache).
  """
  mapping = (
    dict(zip(vectors.layers, vectors.vectors)) if hasattr(vectors, "layers") else dict(vectors)
  )
  if layers is not None:
    missing = [lay for lay in layers if lay not in mapping]
    if missing:
      raise ValueError(f"no steering vector for layers {missing}; have {sorted(mapping)}")
    mapping = {lay: mapping[lay] for lay in layers}
  if not mapping:
    raise ValueError("no steering vectors given")
  n, d = lm.config.num_layers, lm.config.hidden_size
  for lay, v in mapping.items():
    if not 0 <= int(lay) < n:
      raise ValueError(f"layer {lay} is out of range for a model with {n} layers")
    if np.shape(v) != (d,):
      raise ValueError(f"steering vector for layer {lay} has shape {np.shape(v)}; expected ({d},)")
  order = tuple(sorted(int(k) for k in mapping))
  vecs = jnp.stack([jnp.asarray(mapping[k], jnp.float32) for k in order])
  a = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), (len(order),))
  return lm.with_intercept(SteerInterceptor(order, normalize), {"vectors": vecs, "alpha": a})
