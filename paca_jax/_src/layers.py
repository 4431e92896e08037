"""Scanned decoders: per-layer plans on stacked (``nn.scan``) parameters.

A ``jaxsteer`` ``CausalLM`` with ``ModelConfig.scan_layers`` keeps every decoder layer's parameters
stacked under ``layers/`` with a leading layer axis (``layers/attn/q_proj/kernel`` is
``(L, in, out)``). PaCA (Woo et al., ICLR 2025) and LoRA adapt per-layer kernels, so:

* a plan is always made of per-layer entries (``layers_3/attn/q_proj``), chosen exactly as on the
  unrolled model (the same path seeds, hence the same rows for the same key):
  :func:`per_layer_kernels` gives ``select`` read-only per-layer views of stacked kernels;
* the adapters of one stacked module are stacked too (a :class:`LayerGroup`: PaCA rows
  ``(L, r, out)`` and indices ``(L, r)``, LoRA ``a`` ``(L, in, r)`` and ``b`` ``(L, r, out)``),
  stored in the trainable tree under the stacked path (``layers/attn/q_proj/rows``);
* inside the scan every layer reads its own slice: the method adds its per-module data to the
  model's params as one extra leaf ``ADAPTER_LEAF`` of the stacked module, so ``nn.scan`` slices it
  along the layer axis with the kernel, and the interceptor reads it with ``get_variable``;
* exports unstack to per-layer names (:func:`unstack`), so they are byte-for-byte the unrolled ones.

Usage::

  groups, plain = layer_groups(plan.entries, params)   # stacked groups, per-layer-tree entries
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from flax import traverse_util

__all__ = [
  "ADAPTER_LEAF",
  "LayerGroup",
  "is_stacked",
  "layer_groups",
  "per_layer_kernels",
  "stack",
  "unstack",
]

# The extra leaf a stacked module carries inside the model's params during a scanned forward.
ADAPTER_LEAF = "paca_jax_adapter"

_STACKED = re.compile(r"(^|/)layers/")
_PER_LAYER = re.compile(r"^(.*?)layers_(\d+)/(.+)$")


def _inner(params):
  if isinstance(params, dict) and set(params.keys()) == {"params"}:
    return params["params"]
  return params


def is_stacked(params) -> bool:
  """Whether the tree holds a scanned decoder's stacked ``layers/...`` parameters."""
  flat = traverse_util.flatten_dict(_inner(params), sep="/")
  return any(_STACKED.search(p) for p in flat)


class _LayerView:
  """Read-only view of layer ``i`` of a stacked kernel: shape/dtype without a copy; values
  (``np.asarray``) only when a selector reads them."""

  def __init__(self, stacked, i):
    self._a, self._i = stacked, i
    self.shape = tuple(stacked.shape[1:])
    self.ndim = len(self.shape)
    self.dtype = stacked.dtype

  def __array__(self, dtype=None, copy=None):
    a = np.asarray(self._a[self._i])
    return a if dtype is None else a.astype(dtype)

  def reshape(self, *shape):
    return np.asarray(self).reshape(*shape)


def per_layer_kernels(flat_kernels: dict) -> dict:
  """``{module path: kernel}`` with each stacked ``.../layers/m`` replaced by per-layer views
  ``.../layers_i/m`` (``i`` in ``0..L-1``); other entries unchanged."""
  out = {}
  for path, k in flat_kernels.items():
    m = _STACKED.search(path + "/")
    if m is None:
      out[path] = k
      continue
    head, tail = path[: m.start()] + m.group(1), path[m.end() :]
    for i in range(int(k.shape[0])):
      out[f"{head}layers_{i}/{tail}".rstrip("/")] = _LayerView(k, i)
  return out


@dataclasses.dataclass(frozen=True)
class LayerGroup:
  """The per-layer plan entries (layers ``0..L-1`` in order) of one stacked module ``path``."""

  path: str
  entries: tuple

  @property
  def layers(self) -> int:
    return len(self.entries)

  @property
  def first(self):
    return self.entries[0]

  @property
  def shape(self) -> tuple[int, ...]:
    return self.first.shape

  @property
  def idx(self) -> np.ndarray:
    """``(L, r)`` int32 row indices, layer by layer (sorted within each layer)."""
    return np.asarray([e.idx for e in self.entries], np.int32).reshape(self.layers, -1)


def layer_groups(entries, params) -> tuple[tuple[LayerGroup, ...], tuple]:
  """``(stacked groups, remaining entries)`` of a plan's per-layer ``entries`` for ``params``.

  On a per-layer (unrolled) tree everything remains. On a stacked tree the entries
  ``.../layers_i/m`` are grouped by stacked module ``.../layers/m``.

  Raises:
    ValueError: a stacked module adapted in some layers only, or with different ranks or shapes
      across layers (a scanned layer has one shape for all layers).
  """
  flat = traverse_util.flatten_dict(_inner(params), sep="/")
  stacked = {p for p in flat if _STACKED.search(p)}
  if not stacked:
    return (), tuple(entries)
  by_group: dict[str, dict[int, object]] = {}
  rest = []
  for e in entries:
    m = _PER_LAYER.match(e.path)
    gpath = None if m is None else f"{m.group(1)}layers/{m.group(3)}"
    if gpath is None or not any(p.startswith(gpath + "/") for p in stacked):
      rest.append(e)
      continue
    by_group.setdefault(gpath, {})[int(m.group(2))] = e
  groups = []
  for gpath, layers in sorted(by_group.items()):
    n = int(next(flat[p].shape[0] for p in stacked if p.startswith(gpath + "/")))
    if sorted(layers) != list(range(n)):
      raise ValueError(
        f"module {gpath!r} of a scanned decoder is adapted in layers {sorted(layers)} only; "
        f"all {n} layers run through one nn.scan, so adapt it in every layer or in none "
        "(or convert the model with jaxsteer.models.relayout(lm, scan_layers=False))"
      )
    es = tuple(layers[i] for i in range(n))
    for e in es:
      if any(b <= a for a, b in zip(e.idx, e.idx[1:])):
        raise ValueError(f"module {e.path!r}: plan indices must be sorted and distinct")
    if len({(len(e.idx), e.shape) for e in es}) != 1:
      raise ValueError(f"module {gpath!r}: layers differ in rank or shape; cannot stack them")
    groups.append(LayerGroup(gpath, es))
  return tuple(groups), tuple(rest)


def unstack(tree):
  """Stacked ``layers`` subtrees -> per-layer ``layers_i`` (``jaxsteer``'s ``unstack_layers``)."""
  from jaxsteer._src.models.modules import unstack_layers

  return unstack_layers(tree) if is_stacked(tree) else tree


def stack(tree, num_layers: int):
  """Per-layer ``layers_i`` subtrees -> stacked ``layers`` (``jaxsteer``'s ``stack_layers``)."""
  from jaxsteer._src.models.modules import stack_layers

  return stack_layers(tree, num_layers)
