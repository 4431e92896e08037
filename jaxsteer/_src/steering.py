"""Norm-preserving residual-stream steering through ``flax.linen.intercept_methods``.

GrAInS (Nguyen et al., 2025) adds a steering vector to the output of chosen decoder layers and
rescales each token back to its original norm:

  h' = (h + alpha v) * |h| / |h + alpha v|        (per token, over the hidden dimension)

The interceptor wraps ``DecoderLayer.__call__`` of the chosen layers (``site="layer"``), or the
attention block's output (``site="attn"``, after ``o_proj``) or the MLP's output (``site="mlp"``)
inside them. ``positions`` chooses the tokens: ``all`` (default), ``prompt`` (tokens of a forward
pass or of generation's prefill) or ``generated`` (tokens produced by ``generate``'s decode steps).
The interceptor is entered inside the jitted forward, with the vectors, alpha and the position
choice as traced arguments (changing them recompiles nothing).

  >>> steered = jaxsteer.steer(lm, vectors, alpha=4.0)  # doctest: +SKIP
  >>> steered.generate("Once upon a time", max_new_tokens=32)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jaxsteer._src.models.modules import MLP, Attention, DecoderLayer, layer_of

SITES = ("layer", "attn", "mlp")
POSITIONS = {"all": 0, "prompt": 1, "generated": 2}


def norm_preserving_add(h, v, alpha, normalize: bool = True, where=None):
  """``(h + alpha v) * |h| / |h + alpha v|`` per token (float32 math, result in ``h.dtype``).

  ``where`` (broadcastable to ``h[..., :1]``), if given, limits the change to those tokens.
  """
  hf = h.astype(jnp.float32)
  hs = hf + alpha * v.astype(jnp.float32)
  if normalize:
    n_h = jnp.linalg.norm(hf, axis=-1, keepdims=True)
    n_s = jnp.linalg.norm(hs, axis=-1, keepdims=True)
    hs = hs * (n_h / jnp.maximum(n_s, jnp.finfo(jnp.float32).tiny))
  if where is not None:
    hs = jnp.where(where, hs, hf)
  return hs.astype(h.dtype)


def _arg(fargs, fkwargs, i, name, default=None):
  return fargs[i] if len(fargs) > i else fkwargs.get(name, default)


def generated_flags(x, slots, decode):
  """(B, T, 1) True at tokens produced by generation's decode steps.

  ``generate`` runs one prefill over the prompt (``decode=True``, all prompt tokens) and then
  one-token steps at slots after the prompt; a plain forward (``decode=False``) has no generated
  token. A one-token prefill sits at slot 0, every decode step at a later slot.
  """
  b, t = x.shape[:2]
  if not decode or t != 1:
    return jnp.zeros((b, t, 1), bool)
  return (jnp.asarray(slots) > 0).reshape(b, t, 1)


def position_mask(mode, gen):
  """Where to steer, from the traced ``mode`` (``POSITIONS`` code) and the generated flags."""
  return jnp.where(mode == 0, True, jnp.where(mode == 1, ~gen, gen))


@dataclasses.dataclass(frozen=True)
class SteerInterceptor:
  """Static part of a steering intervention (hashable; a jit static argument).

  Calling it with the traced ``args`` (``{"vectors": (L, D), "alpha": (L,), "positions": ()}``)
  returns the Flax interceptor function. With unrolled layers each chosen ``DecoderLayer`` picks
  its row of ``vectors`` at trace time; with scanned layers (``ModelConfig.scan_layers``) the
  layer index is traced, so the row is gathered from the stacked ``vectors`` and a per-layer mask
  leaves the other layers untouched.
  """

  layers: tuple[int, ...]
  normalize: bool = True
  site: str = "layer"

  def __call__(self, args):
    index = {layer: j for j, layer in enumerate(self.layers)}
    # layer -> row of ``vectors`` (-1: not steered), for a traced layer index
    table = np.full(max(self.layers) + 2, -1, np.int32)
    table[list(self.layers)] = np.arange(len(self.layers))
    site_type = {"attn": Attention, "mlp": MLP}.get(self.site)
    current = []  # the enclosing DecoderLayer's (row, generated flags) (trace-time bookkeeping)

    def row_of(layer):
      if isinstance(layer, int):
        return index.get(layer)
      return jnp.asarray(table)[jnp.minimum(layer, table.size - 1)]

    def steer_at(h, j, gen):
      mode = args.get("positions", jnp.int32(0))
      where = position_mask(mode, gen)
      if not isinstance(j, int):  # traced layer: the row, or no change outside the chosen layers
        where = where & (j >= 0)
        j = jnp.maximum(j, 0)
      return norm_preserving_add(h, args["vectors"][j], args["alpha"][j], self.normalize, where)

    def interceptor(next_fun, fargs, fkwargs, context):
      module = context.module
      if context.method_name != "__call__":
        return next_fun(*fargs, **fkwargs)
      if isinstance(module, DecoderLayer):
        j = row_of(layer_of(module, fargs, fkwargs))
        if j is None:
          return next_fun(*fargs, **fkwargs)
        x = fargs[0] if fargs else fkwargs["x"]
        gen = generated_flags(
          x, _arg(fargs, fkwargs, 2, "slots"), _arg(fargs, fkwargs, 4, "decode", False)
        )
        current.append((j, gen))
        try:
          h = next_fun(*fargs, **fkwargs)
        finally:
          current.pop()
        if self.site == "layer":
          return steer_at(h, j, gen)
        return h
      if site_type is not None and isinstance(module, site_type):
        if not current or module.name != self.site:
          return next_fun(*fargs, **fkwargs)
        j, gen = current[-1]
        return steer_at(next_fun(*fargs, **fkwargs), j, gen)
      return next_fun(*fargs, **fkwargs)

    return interceptor


def check_finite(name: str, value) -> np.ndarray:
  """``value`` as a float array, or a ValueError naming ``name`` when it holds NaN or infinity."""
  arr = np.asarray(value, np.float64)
  if not np.isfinite(arr).all():
    raise ValueError(f"{name} must be finite; got NaN or infinite values")
  return arr


def steer(
  lm,
  vectors,
  alpha=1.0,
  *,
  layers=None,
  normalize: bool | None = None,
  site: str | None = None,
  positions: str = "all",
):
  """A ``LanguageModel`` that steers ``lm``'s residual stream with ``vectors``.

  Args:
    lm: the model (a ``LanguageModel``).
    vectors: a ``SteeringVectors`` or a mapping ``{layer: (D,) vector}``.
    alpha: strength, a scalar or one value per layer (traced: changing it recompiles nothing).
    layers: optionally a subset of the vectors' layers to apply.
    normalize: keep each token's norm (GrAInS); ``False`` gives plain addition (ActAdd/CAA).
      Default: ``metadata["normalize"]`` of the vectors (``False`` for ITI), else ``True``.
    site: ``layer`` (the decoder layer's output, the residual stream), ``attn`` (the attention
      block's output) or ``mlp`` (the MLP's output) of each chosen layer. Default: the site the
      vectors were fitted at (``metadata["site"]``), else ``layer``.
    positions: ``all`` tokens, ``prompt`` tokens only or ``generated`` tokens only.

  Returns:
    A ``LanguageModel`` with the same interface (forward, ``generate`` with KV cache).
  """
  meta = getattr(vectors, "metadata", {}) or {}
  mapping = (
    dict(zip(vectors.layers, vectors.vectors)) if hasattr(vectors, "layers") else dict(vectors)
  )
  site = site or meta.get("site", "layer")
  normalize = bool(meta.get("normalize", True)) if normalize is None else bool(normalize)
  if site not in SITES:
    raise ValueError(f"unknown steering site {site!r}; known: {', '.join(SITES)}")
  if positions not in POSITIONS:
    raise ValueError(f"unknown positions {positions!r}; known: {', '.join(POSITIONS)}")
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
    check_finite(f"the steering vector for layer {lay}", v)
  order = tuple(sorted(int(k) for k in mapping))
  a = check_finite("alpha", alpha)
  if a.ndim > 1 or (a.ndim == 1 and a.shape[0] not in (1, len(order))):
    raise ValueError(f"alpha must be a scalar or one value per layer ({len(order)}); got {a.shape}")
  vecs = jnp.stack([jnp.asarray(mapping[k], jnp.float32) for k in order])
  a = jnp.broadcast_to(jnp.asarray(a, jnp.float32), (len(order),))
  args = {"vectors": vecs, "alpha": a, "positions": jnp.int32(POSITIONS[positions])}
  return lm.with_intercept(SteerInterceptor(order, normalize, site), args)
