"""ITI: Inference-Time Intervention (Li, Patel, Viegas, Pfister, Wattenberg, NeurIPS 2023).

A baseline for GrAInS in the same API:

1. Activations: each attention head's output before ``o_proj`` (its ``head_dim`` slice of the
   concatenated attention output) at the last token of ``prompt + preferred`` (label 1) and
   ``prompt + dispreferred`` (label 0), captured by interception.
2. Probes: one logistic-regression probe per (layer, head), trained on a 4:1 train/validation
   split of the pairs; heads ranked by validation accuracy; the top ``k`` are intervened on.
3. Direction per selected head: the mass-mean shift theta = mean(label 1) - mean(label 0) as a
   unit vector; sigma = the standard deviation of the activations projected on theta.
4. Intervention x_h <- x_h + alpha sigma theta at every position, in its residual form: the
   attention block's output gets ``o_proj.kernel[head slice].T @ (sigma theta)`` summed over the
   layer's selected heads, times alpha. ``fit`` returns these per-layer vectors as
   ``SteeringVectors`` with ``site="attn"`` and ``normalize=False``, so ``jaxsteer.steer`` applies
   them by interception, with the KV cache and without recompiling for a new alpha.

Scanned decoders (``ModelConfig.scan_layers``) work alike: the heads are sown per scanned layer
(a leading layer axis) and the steering applies each layer's vector by its traced layer index.

  >>> vecs = iti.fit(lm, pairs, k=16)  # doctest: +SKIP
  >>> jaxsteer.steer(lm, vecs, alpha=15.0).generate("Q: ...\\nA:")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsteer._src.grains import Pair, SteeringVectors, _check_common, _source
from jaxsteer._src.models.lm import apply_intercepted


@dataclasses.dataclass(frozen=True)
class HeadCapture:
  """Sows the input of every layer's ``attn/o_proj`` into ``intermediates`` (scanned layers,
  ``ModelConfig.scan_layers``: under ``layers/`` with a leading layer axis)."""

  def __call__(self, _args=None):
    def interceptor(next_fun, args, kwargs, context):
      m = context.module
      if context.method_name == "__call__" and m.name == "o_proj" and len(m.path) >= 3:
        if m.path[-2] == "attn" and _is_layer_key(m.path[-3]):
          m.sow("intermediates", "heads", args[0] if args else kwargs["inputs"])
      return next_fun(*args, **kwargs)

    return interceptor


def _is_layer_key(key: str) -> bool:
  return key == "layers" or (key.startswith("layers_") and key[7:].isdigit())


def _collect(tree, out):
  for key, value in tree.items():
    if isinstance(value, dict) and "attn" in value and _is_layer_key(key):
      heads = value["attn"]["o_proj"]["heads"][0]
      if key == "layers":  # scanned: (L, B, T, H * Dh)
        out.update({i: heads[i] for i in range(heads.shape[0])})
      else:
        out[int(key[7:])] = heads
    elif isinstance(value, dict):
      _collect(value, out)
  return out


@functools.partial(jax.jit, static_argnames=("module", "factory", "num_layers"))
def capture_heads(module, factory, params, args, ids, mask, last, num_layers):
  """(B, L, H * Dh) pre-``o_proj`` attention outputs at position ``last`` of each row."""
  with nn.intercept_methods(HeadCapture()()):
    _, state = apply_intercepted(
      module, factory, params, args, ids, attention_mask=mask, mutable=["intermediates"]
    )
  found = _collect(state["intermediates"], {})
  x = jnp.stack([found[i] for i in range(num_layers)], axis=1)  # (B, L, T, HD)
  return x[jnp.arange(x.shape[0]), :, last].astype(jnp.float32)


def head_activations(lm, rows: Sequence[Sequence[int]], batch_size: int = 16) -> np.ndarray:
  """(N, L, H, Dh) head outputs before ``o_proj`` at the last token of each id row."""
  from jaxsteer._src.attribution import pow2_width

  cfg = lm.config
  f, a = lm.intercept
  out = []
  for b0 in range(0, len(rows), batch_size):
    sel = list(range(b0, min(len(rows), b0 + batch_size)))
    sel = sel + [sel[-1]] * (batch_size - len(sel))
    w = pow2_width(max(len(rows[i]) for i in sel), cfg.max_position_embeddings)
    ids = np.full((batch_size, w), lm.pad_id, np.int32)
    mask = np.zeros((batch_size, w), np.int32)
    for j, i in enumerate(sel):
      ids[j, : len(rows[i])] = rows[i]
      mask[j, : len(rows[i])] = 1
    last = jnp.asarray([len(rows[i]) - 1 for i in sel], jnp.int32)
    x = capture_heads(
      lm.module, f, lm.params, a, jnp.asarray(ids), jnp.asarray(mask), last, cfg.num_layers
    )
    out.append(np.asarray(x)[: min(batch_size, len(rows) - b0)])
  x = np.concatenate(out)
  return x.reshape(x.shape[0], cfg.num_layers, cfg.num_heads, cfg.head_dim)


@functools.partial(jax.jit, static_argnames=("steps",))
def _train_probes(x, y, steps: int = 300, lr: float = 0.1, l2: float = 1e-2):
  """Logistic regression per probe: x (P, N, D) standardised features, y (N,). Returns (w, b)."""

  def loss(wb):
    w, b = wb
    z = jnp.einsum("pnd,pd->pn", x, w) + b[:, None]
    ll = jnp.mean(jax.nn.softplus(z) - y[None] * z, axis=1)
    return jnp.sum(ll) + l2 * jnp.sum(w * w)

  wb = (jnp.zeros(x.shape[::2]), jnp.zeros(x.shape[0]))
  grad = jax.grad(loss)

  def step(wb, _):
    g = grad(wb)
    return jax.tree.map(lambda p, q: p - lr * q, wb, g), None

  wb, _ = jax.lax.scan(step, wb, None, length=steps)
  return wb


def fit(
  lm,
  pairs: Sequence[Pair],
  *,
  k: int = 16,
  layers: Sequence[int] | None = None,
  val_fraction: float = 0.2,
  seed: int = 0,
  batch_size: int = 16,
) -> SteeringVectors:
  """Fits ITI: per-head probes, the top ``k`` heads, mass-mean shift directions scaled by std.

  Args:
    lm: a ``LanguageModel`` (text pairs; see ``grains.Pair``).
    pairs: steering pairs; the preferred response is the "true" class.
    k: number of heads intervened on (the paper: 48 of LLaMA-7B's 1024).
    layers: layers whose heads are candidates (default: all).
    val_fraction: share of the pairs held out to rank the probes (the paper's 4:1 split).
    seed: the train/validation shuffle.
    batch_size: rows per forward pass.

  Returns:
    ``SteeringVectors`` over the layers holding a selected head, ``metadata["site"] = "attn"``,
    ``metadata["normalize"] = False``, the heads, their validation accuracies and sigmas.
  """
  cfg = lm.config
  layers = tuple(range(cfg.num_layers)) if layers is None else tuple(sorted(set(layers)))
  rows = _check_common(lm, pairs, layers)
  n = len(rows)
  if n < 5:
    raise ValueError(f"ITI needs at least 5 pairs for a train/validation split; got {n}")
  if not 0 < val_fraction < 1:
    raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
  n_heads = len(layers) * cfg.num_heads
  if not 1 <= int(k) <= n_heads:
    raise ValueError(f"k must lie in [1, {n_heads}] (heads in the chosen layers), got {k}")
  seqs = [p[0] for p, _, _ in rows] + [q[0] for _, q, _ in rows]
  acts = head_activations(lm, seqs, batch_size)[:, list(layers)]  # (2N, L', H, Dh)
  y = np.concatenate([np.ones(n), np.zeros(n)]).astype(np.float32)
  perm = np.random.default_rng(seed).permutation(n)
  n_val = max(1, round(val_fraction * n))
  val_pairs, train_pairs = perm[:n_val], perm[n_val:]
  tr = np.concatenate([train_pairs, train_pairs + n])
  va = np.concatenate([val_pairs, val_pairs + n])
  x = acts.reshape(2 * n, n_heads, cfg.head_dim).transpose(1, 0, 2)  # (P, 2N, Dh)
  mu = x[:, tr].mean(axis=1, keepdims=True)
  sd = x[:, tr].std(axis=1, keepdims=True) + 1e-6
  xs = (x - mu) / sd
  w, b = (np.asarray(t) for t in _train_probes(jnp.asarray(xs[:, tr]), jnp.asarray(y[tr])))
  pred = (np.einsum("pnd,pd->pn", xs[:, va], w) + b[:, None]) > 0
  acc = (pred == (y[va] > 0.5)[None]).mean(axis=1)
  top = np.argsort(-acc, kind="stable")[: int(k)]
  # Mass-mean shift over all pairs, unit norm; sigma of the projections.
  theta = x[:, :n].mean(axis=1) - x[:, n:].mean(axis=1)  # (P, Dh)
  theta /= np.maximum(np.linalg.norm(theta, axis=-1, keepdims=True), 1e-12)
  sigma = np.einsum("pnd,pd->pn", x, theta).std(axis=1)
  kernel = _o_proj_kernels(lm)  # {layer: (H * Dh, D)}
  vec = {}
  heads = []
  for p in top:
    li, h = divmod(int(p), cfg.num_heads)
    layer = layers[li]
    sl = slice(h * cfg.head_dim, (h + 1) * cfg.head_dim)
    shift = sigma[p] * theta[p]
    vec[layer] = vec.get(layer, 0.0) + shift @ kernel[layer][sl]
    heads.append(
      dict(
        layer=layer, head=h, val_accuracy=float(acc[p]), sigma=float(sigma[p]),
        theta=[float(t) for t in theta[p]],
      )
    )  # fmt: skip
  order = sorted(vec)
  meta = dict(
    method="iti",
    source=_source(lm),
    k=int(k),
    site="attn",
    normalize=False,
    heads=heads,
    n_pairs=n,
    n_val=int(n_val),
    seed=int(seed),
  )
  return SteeringVectors(tuple(order), np.stack([vec[i] for i in order]).astype(np.float32), meta)


def _o_proj_kernels(lm) -> dict[int, np.ndarray]:
  params = lm.params
  if "language_model" in params:  # a VLM's decoder
    params = params["language_model"]
  if "layers" in params:  # scanned decoder: stacked (L, H * Dh, D)
    stacked = np.asarray(params["layers"]["attn"]["o_proj"]["kernel"], np.float32)
    return {i: stacked[i] for i in range(lm.config.num_layers)}
  return {
    i: np.asarray(params[f"layers_{i}"]["attn"]["o_proj"]["kernel"], np.float32)
    for i in range(lm.config.num_layers)
  }
