"""PaCA, int8 PaCA, LoRA and full fine-tuning on an unmodified Flax Linen model.

PaCA (Woo et al., "PaCA: Partial Connection Adaptation for Efficient Fine-Tuning", ICLR 2025)
trains ``r`` rows of every targeted ``(in, out)`` kernel. Here it reaches any Linen model through
``flax.linen.intercept_methods``: calls of ``nn.Dense`` / ``nn.DenseGeneral`` modules whose path is
in the plan are answered by :func:`partial_matmul`; the model's code is never touched.

Every method is a frozen (hashable) dataclass with the same small interface, used by the train
step::

  method = paca_jax.Paca(plan)                      # or PacaInt8(plan), Lora(lora_plan), Full()
  frozen, trainable = method.init(params, key)      # trainable: float32, only what is trained
  frozen = method.prepare(frozen, trainable)        # PaCA: write rows into the kernels (start of step)
  with method.context(frozen, trainable):           # PaCA / LoRA: interceptors
    logits = model.apply({"params": method.model_params(frozen, trainable)}, tokens)
  merged = method.merge(frozen, trainable)          # a plain params tree for export

Trainable trees are nested dicts that mirror the model's module paths, with leaves ``rows``
(PaCA, ``(r, out)``), ``a``/``b`` (LoRA), or the whole params tree (full fine-tuning). With a plan
``alpha`` the stored ``rows`` are the kernel rows divided by ``s = alpha / r`` (:func:`row_values`
gives the kernel rows); without one (or ``alpha == r``) they are the kernel rows themselves.

Scanned decoders (``jaxsteer`` ``ModelConfig.scan_layers``: parameters stacked under ``layers/``)
take the same per-layer plans; every method stacks the adapters of one stacked module along the
layer axis (``layers/attn/q_proj/rows`` ``(L, r, out)``, ``a`` ``(L, in, r)``, ``b`` ``(L, r,
out)``, quantised bases ``(L, ...)``) and hands each layer its slice inside the scan through one
extra params leaf (``paca_jax._src.layers``). Layer ``i``'s rows, initial adapters and quantised
kernels are exactly those of module ``layers_i/...`` in the unrolled model.
"""

from __future__ import annotations

import contextlib
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from paca_jax._src.layers import ADAPTER_LEAF, LayerGroup, layer_groups
from paca_jax._src.nf4 import dequantize_nf4, nf4_matmul, nf4_partial_matmul, quantize_nf4
from paca_jax._src.ops import partial_matmul, take_rows, write_rows_into
from paca_jax._src.plan import Plan, PlanEntry, find_kernels, match_targets, path_seed
from paca_jax._src.plan import unwrap_params as _unwrap

__all__ = [
  "Paca",
  "PacaInt8",
  "Lora",
  "LoraPlan",
  "Full",
  "LoraNf4",
  "PacaNf4",
  "intercept",
  "write_rows",
  "quantize_int8",
  "dequantize_int8",
  "int8_partial_matmul",
  "lora_plan",
  "row_values",
]


# ------------------------------------------------------------------------------ param trees
# Nested dicts addressed by ``a/b/c`` module paths, through ``flax.traverse_util``.


def _flat(tree) -> dict:
  """``{"a/b/leaf": value}``; empty subtrees are kept, so :func:`_nested` rebuilds the same tree."""
  return traverse_util.flatten_dict(tree, keep_empty_nodes=True, sep="/")


def _nested(flat) -> dict:
  return traverse_util.unflatten_dict(flat, sep="/")


def _by_module(tree, paths) -> dict:
  """``{module path: its subtree}`` for the modules ``paths`` of a nested tree."""
  paths = frozenset(paths)
  return traverse_util.flatten_dict(tree, sep="/", is_leaf=lambda p, _: "/".join(p) in paths)


def _pop_kernels(params, shapes):
  """``(params without the kernels of ``shapes``, {path: kernel reshaped to shapes[path]})``.

  A module left with no parameters stays in the tree as an empty dict.
  """
  flat = _flat(params)
  kernels = {}
  for path, shape in shapes.items():
    kernels[path] = flat.pop(path + "/kernel").reshape(shape)
    if not any(k.startswith(path + "/") for k in flat):
      flat[path] = traverse_util.empty_node
  return _nested(flat), kernels


def _split(entries, tree):
  """``(stacked groups, per-layer-tree entries)`` of ``entries`` on ``tree``'s layout."""
  return layer_groups(entries, tree)


def _g3(g: LayerGroup) -> tuple[int, int, int]:
  return (g.layers, g.first.in_features, g.first.out_features)


def _shapes(groups, plain) -> dict:
  out = {e.path: (e.in_features, e.out_features) for e in plain}
  out.update({g.path: _g3(g) for g in groups})
  return out


def _inject(params, data):
  """``params`` with ``data[g]`` (a dict of stacked arrays) as leaf ``ADAPTER_LEAF`` of every
  stacked module ``g``: ``nn.scan`` slices it along the layer axis with the module's kernel."""
  if not data:
    return params
  flat = _flat(params)
  for gpath, d in data.items():
    if flat.get(gpath) is traverse_util.empty_node:
      del flat[gpath]
    for k, v in traverse_util.flatten_dict(d, sep="/").items():
      flat[f"{gpath}/{ADAPTER_LEAF}/{k}"] = v
  return _nested(flat)


def _layer_data(module, path):
  d = module.get_variable("params", ADAPTER_LEAF)
  if d is None:
    raise ValueError(
      f"module {path!r} of a scanned decoder was called without its adapters; run the model "
      "with method.model_params(frozen, trainable) inside method.context(frozen, trainable)"
    )
  return d


def _layer_entry(g: LayerGroup, idx) -> PlanEntry:
  """The entry one scanned layer sees: the stacked path, that layer's (traced) indices."""
  return PlanEntry(g.path, idx, g.shape)


def _take_layer_rows(k3, idx):
  """``k3[l, idx[l]]`` for every layer: ``(L, in, out)``, ``(L, r)`` -> ``(L, r, out)``."""
  lidx = jnp.arange(k3.shape[0], dtype=jnp.int32)[:, None]
  return k3.at[lidx, jnp.asarray(idx)].get(indices_are_sorted=True, unique_indices=True)


def _write_layer_rows(k3, idx, rows):
  """``k3.at[l, idx[l]].set(rows[l])`` for every layer (sorted, unique: in place under donation)."""
  lidx = jnp.arange(k3.shape[0], dtype=jnp.int32)[:, None]
  return k3.at[lidx, jnp.asarray(idx)].set(
    rows.astype(k3.dtype), indices_are_sorted=True, unique_indices=True
  )


def _stack_trees(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _layer_slice(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def _set_kernels(params, kernels):
  """``params`` with ``{path: kernel}`` written in (a functional update)."""
  flat = _flat(params)
  for path, k in kernels.items():
    if flat.get(path) is traverse_util.empty_node:
      del flat[path]
    flat[path + "/kernel"] = k
  return _nested(flat)


# ----------------------------------------------------------------------------- interception


def _module_path(module) -> str:
  return "/".join(str(p) for p in module.path)


def _dense_geometry(module, kernel_shape):
  """(in, out_shape) of a Dense / DenseGeneral that contracts only the last input axis."""
  if isinstance(module, nn.DenseGeneral):
    axis = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    if axis not in ((-1,),) or tuple(module.batch_dims) != ():
      raise ValueError(
        f"module {_module_path(module)!r}: only DenseGeneral with axis=-1 and no batch_dims is "
        f"supported (got axis={module.axis}, batch_dims={module.batch_dims})"
      )
  return kernel_shape[0], tuple(kernel_shape[1:])


def _bias(module, dtype, out_shape):
  if not module.use_bias:
    return None
  b = module.get_variable("params", "bias")
  return None if b is None else jnp.asarray(b, dtype).reshape(int(np.prod(out_shape)))


@contextlib.contextmanager
def _intercepting(paths, compute, strict: bool = True):
  """Routes ``__call__`` of targeted Dense/DenseGeneral modules to ``compute(module, x, path)``."""
  paths = frozenset(paths)
  seen = set()

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, nn.Dense | nn.DenseGeneral):
      return next_fun(*args, **kwargs)
    path = _module_path(module)
    if path not in paths:
      return next_fun(*args, **kwargs)
    seen.add(path)
    (x,) = args
    return compute(module, x, path, next_fun)

  with nn.intercept_methods(interceptor):
    yield
  missing = paths - seen
  if strict and missing:
    raise ValueError(
      f"adapted modules were not called as nn.Dense/nn.DenseGeneral: {sorted(missing)} "
      "(their kernels would silently stay frozen)"
    )


def _scaled(rows, s: float):
  """``s * rows``; no operation at all for ``s == 1`` (so scale-1 plans keep their numbers)."""
  return rows if s == 1.0 else rows * jnp.asarray(s, rows.dtype)


def _rows(plan: Plan, rows_by_module, path: str):
  return _scaled(rows_by_module[path]["rows"], plan.scale(path))


def row_values(plan: Plan, trainable, path: str):
  """The kernel rows ``(r, out)`` of module ``path``: the stored rows times ``alpha / r``."""
  return _rows(plan, _by_module(trainable, (path,)), path)


def _group_scale(plan: Plan, g: LayerGroup) -> float:
  return plan.scale(g.first.path)


def _paca_compute(plan: Plan, rows, merged: bool, groups=()):
  gmap = {g.path: g for g in groups}
  grouped = {e.path for g in groups for e in g.entries}
  rows = _by_module(rows, [p for p in plan.paths if p not in grouped])

  def compute(module, x, path, next_fun):
    del next_fun
    if path in gmap:  # a scanned layer: its indices and (scaled) rows come with the params
      d = _layer_data(module, path)
      e, p = _layer_entry(gmap[path], d["idx"]), d["rows"]
    else:
      e, p = plan[path], _rows(plan, rows, path)
    kernel = module.get_variable("params", "kernel")
    _, out_shape = _dense_geometry(module, kernel.shape)
    dtype = module.dtype or jnp.result_type(x.dtype, kernel.dtype)
    k2 = kernel.reshape(e.in_features, e.out_features).astype(dtype)
    sorted_ = True if path in gmap else None  # layer_groups checked the stacked indices
    y = partial_matmul(x.astype(dtype), k2, p, e.idx, merged=merged, indices_sorted=sorted_)
    b = _bias(module, dtype, out_shape)
    if b is not None:
      y = y + b
    return y.reshape(*x.shape[:-1], *out_shape)

  return compute


def intercept(plan: Plan, rows, *, merged: bool = False, strict: bool = True):
  """Context manager: targeted Dense calls compute ``x @ kernel.at[idx].set(rows)`` with PaCA's VJP.

  Args:
    plan: the static PaCA plan.
    rows: nested dict ``{module path...: {"rows": (r, out)}}`` (the trainable tree).
    merged: the kernels already hold the rows (after :func:`write_rows`), so the forward is one
      GEMM. With ``merged=False`` the output is exact for any kernel values.
    strict: raise if a planned module was never reached as a Dense call during the block.

  This is the per-layer (unrolled) form; on a scanned decoder use :class:`Paca`'s ``context`` with
  ``model_params``, which hand each scanned layer its rows.
  """
  return _intercepting(plan.paths, _paca_compute(plan, rows, merged), strict)


def _paths(groups, plain):
  return [e.path for e in plain] + [g.path for g in groups]


def write_rows(params, plan: Plan, rows):
  """``kernel.at[idx].set(rows)`` for every planned module (functional; in place under donation).

  On a scanned decoder's stacked params, ``rows`` holds each stacked module's ``(L, r, out)``.
  """
  params = _unwrap(params)
  groups, plain = _split(plan.entries, params)
  flat, rows = _flat(params), _by_module(rows, _paths(groups, plain))
  for e in plain:
    r = _rows(plan, rows, e.path).reshape(e.rank, *e.shape[1:])
    flat[e.path + "/kernel"] = write_rows_into(flat[e.path + "/kernel"], e.idx, r)
  for g in groups:
    k = flat[g.path + "/kernel"]
    r = _scaled(rows[g.path]["rows"], _group_scale(plan, g))
    flat[g.path + "/kernel"] = _write_layer_rows(k.reshape(_g3(g)), g.idx, r).reshape(k.shape)
  return _nested(flat)


def _init_rows(params, plan: Plan):
  params = _unwrap(params)
  groups, plain = _split(plan.entries, params)
  flat = _flat(params)
  out = {}
  for e in plain:
    k = flat[e.path + "/kernel"]
    rows = take_rows(k, e.idx).reshape(e.rank, e.out_features).astype(jnp.float32)
    s = plan.scale(e.path)
    out[e.path + "/rows"] = rows if s == 1.0 else rows / jnp.float32(s)
  for g in groups:
    k3 = flat[g.path + "/kernel"].reshape(_g3(g))
    rows = _take_layer_rows(k3, g.idx).astype(jnp.float32)
    s = _group_scale(plan, g)
    out[g.path + "/rows"] = rows if s == 1.0 else rows / jnp.float32(s)
  return _nested(out)


def _paca_layer_data(plan: Plan, groups, trainable, quant=None):
  """Per stacked module: its indices ``(L, r)``, scaled rows and (quantised PaCA) base."""
  rows = _by_module(trainable, [g.path for g in groups])
  qd = {} if quant is None else _by_module(quant, [g.path for g in groups])
  out = {}
  for g in groups:
    d = {"idx": jnp.asarray(g.idx), "rows": _scaled(rows[g.path]["rows"], _group_scale(plan, g))}
    if quant is not None:
      d["quant"] = qd[g.path]
    out[g.path] = d
  return out


@dataclasses.dataclass(frozen=True)
class Paca:
  """PaCA: the trainable tree holds only the selected rows (float32); kernels are frozen.

  The rows are written into the (donated) kernels once per optimizer step, at the *start* of the
  step, so the forward and backward read the scatter's result and XLA can update the donated
  buffer in place (spec section 7.2). After a step the returned kernels are one update behind the
  rows; call :meth:`merge` (or the train state's flush) before eval, export or saving.
  """

  plan: Plan
  name: str = "paca"

  def init(self, params, key=None):
    del key
    params = _unwrap(params)
    return params, _init_rows(params, self.plan)

  def prepare(self, frozen, trainable):
    return write_rows(frozen, self.plan, trainable)

  def model_params(self, frozen, trainable):
    groups, _ = _split(self.plan.entries, frozen)
    return _inject(frozen, _paca_layer_data(self.plan, groups, trainable))

  def context(self, frozen, trainable):
    groups, _ = _split(self.plan.entries, frozen)
    compute = _paca_compute(self.plan, trainable, True, groups)
    grouped = {e.path for g in groups for e in g.entries}
    paths = [p for p in self.plan.paths if p not in grouped] + [g.path for g in groups]
    return _intercepting(paths, compute)

  def merge(self, frozen, trainable):
    return write_rows(frozen, self.plan, trainable)

  def num_trainable(self, trainable=None) -> int:
    return self.plan.num_trainable()


# ------------------------------------------------------------------ int8 and NF4 (quantised) PaCA


def quantize_int8(w: jax.Array):
  """Per-output-channel absmax int8: ``w ~= q * scale`` with ``q`` int8 ``(in, out)``."""
  w = jnp.asarray(w, jnp.float32)
  scale = jnp.max(jnp.abs(w), axis=0) / 127.0
  scale = jnp.where(scale == 0, 1.0, scale)
  q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
  return q, scale


def dequantize_int8(q, scale, dtype=jnp.float32):
  return (q.astype(jnp.float32) * scale).astype(dtype)


def _dot_last(a, b_t):
  """``a @ b_t.T`` contracting the last axes, without materialising ``b_t.T``."""
  return jax.lax.dot_general(a, b_t, (((a.ndim - 1,), (1,)), ((), ())))


@jax.custom_vjp
def _q8_pmm(x, q, scale, p, idx):
  cdt = x.dtype
  y = jnp.matmul(x, q.astype(cdt)) * scale.astype(cdt)
  x_sel = x.at[..., idx].get(indices_are_sorted=True, unique_indices=True)
  return y + jnp.matmul(x_sel, p.astype(cdt))


def _q8_fwd(x, q, scale, p, idx):
  x_sel = x.at[..., idx].get(indices_are_sorted=True, unique_indices=True)
  return _q8_pmm(x, q, scale, p, idx), (x_sel, q, scale, p, idx)


def _q8_bwd(res, dy):
  x_sel, q, scale, p, idx = res
  cdt = x_sel.dtype
  dys = dy.astype(cdt)
  dx = _dot_last(dys * scale.astype(cdt), q.astype(cdt))
  dx = dx.at[..., idx].add(_dot_last(dys, p.astype(cdt)), indices_are_sorted=True)
  dp = jnp.einsum("...r,...o->ro", x_sel, dys, preferred_element_type=jnp.float32)
  return dx, None, None, dp.astype(p.dtype), None


_q8_pmm.defvjp(_q8_fwd, _q8_bwd)


def int8_partial_matmul(x, q, scale, p, idx):
  """``x @ w'`` where ``w'`` is the int8 base ``q * scale`` with rows ``idx`` replaced by ``p``.

  ``q`` must hold zeros in rows ``idx`` (see :class:`PacaInt8`); the base is dequantised inside
  the matmul, the rows stay in float. Saves only ``x[..., idx]``; gradients for ``x`` and ``p``.
  """
  return _q8_pmm(x, q, scale, p, jnp.asarray(idx, jnp.int32))


# A quantised base: the planned kernels leave the params tree and are stored, quantised, beside it:
# ``frozen = {"params": rest, "quant": {path: arrays}}``. A store says how one kernel (float32
# ``(in, out)``) is quantised and dequantised and how it enters a matmul; PaCA and LoRA take the
# store as their base (PacaInt8 / PacaNf4 / LoraNf4).


class _Int8Store:
  """Per-output-channel absmax int8 (:func:`quantize_int8`): ``{"q", "qscale"}``."""

  def _quantize(self, k, e):
    q, s = quantize_int8(k)
    return {"q": q, "qscale": s}

  def _dequantize(self, qd, e, dtype):
    return dequantize_int8(qd["q"], qd["qscale"], dtype)

  def _partial_matmul(self, x, qd, rows, e):
    return int8_partial_matmul(x, qd["q"], qd["qscale"], rows, e.idx)


class _Nf4Store:
  """NF4 in PyTorch orientation ``(out, in)``, blocks of ``self.block_size`` (``nf4.py``)."""

  def __post_init__(self):
    _check_block(self.block_size)

  def _quantize(self, k, e):
    return quantize_nf4(k.T, self.block_size, self.double_quant)

  def _dequantize(self, qd, e, dtype):
    return dequantize_nf4(qd, _nf4_geometry(e), self.block_size, dtype).T

  def _partial_matmul(self, x, qd, rows, e):
    return nf4_partial_matmul(x, qd, rows, e.idx, _nf4_geometry(e), self.block_size)

  def _matmul(self, x, qd, e):
    return nf4_matmul(x, qd, _nf4_geometry(e), self.block_size)


def _quantise(store, params, plan, *, zero_rows: bool):
  """``{"params": rest, "quant": ...}``; with ``zero_rows`` the base never holds PaCA's rows.

  A scanned decoder's stacked module is quantised layer by layer (exactly as the unrolled
  model's) and the results stacked along the layer axis.
  """
  groups, plain = _split(plan.entries, params)
  rest, kernels = _pop_kernels(params, _shapes(groups, plain))

  def one(k, e):
    k = k.astype(jnp.float32)
    if zero_rows:
      k = write_rows_into(k, e.idx, jnp.zeros((e.rank, e.out_features)))
    return store._quantize(k, e)

  quant = {e.path: one(kernels[e.path], e) for e in plain}
  for g in groups:
    quant[g.path] = _stack_trees([one(kernels[g.path][i], e) for i, e in enumerate(g.entries)])
  return {"params": rest, "quant": _nested(quant)}


def _check_block(block_size):
  if not isinstance(block_size, int) or block_size <= 0 or block_size % 2:
    raise ValueError(f"NF4 block_size must be a positive even integer, got {block_size!r}")


def _nf4_geometry(e):
  return (e.out_features, e.in_features)  # PyTorch orientation, as bitsandbytes quantises it


class _QuantPaca:
  """PaCA on a quantised base (the store is the other base class): rows float32, unquantised."""

  def init(self, params, key=None):
    del key
    params = _unwrap(params)
    rows = _init_rows(params, self.plan)
    return _quantise(self, params, self.plan, zero_rows=True), rows

  def prepare(self, frozen, trainable):
    return frozen

  def model_params(self, frozen, trainable):
    groups, _ = _split(self.plan.entries, frozen["quant"])
    data = _paca_layer_data(self.plan, groups, trainable, frozen["quant"])
    return _inject(frozen["params"], data)

  def context(self, frozen, trainable):
    plan = self.plan
    groups, plain = _split(plan.entries, frozen["quant"])
    gmap = {g.path: g for g in groups}
    paths = [e.path for e in plain]
    quant, rows = _by_module(frozen["quant"], paths), _by_module(trainable, paths)

    def compute(module, x, path, next_fun):
      if path in gmap:
        d = _layer_data(module, path)
        e, qd, p = _layer_entry(gmap[path], d["idx"]), d["quant"], d["rows"]
      else:
        e, qd, p = plan[path], quant[path], _rows(plan, rows, path)
      _, out_shape = _dense_geometry(module, e.shape)
      dtype = module.dtype or x.dtype
      y = self._partial_matmul(x.astype(dtype), qd, p, e)
      b = _bias(module, dtype, out_shape)
      if b is not None:
        y = y + b
      return y.reshape(*x.shape[:-1], *out_shape)

    return _intercepting(paths + list(gmap), compute)

  def merge(self, frozen, trainable, dtype=jnp.float32):
    groups, plain = _split(self.plan.entries, frozen["quant"])
    paths = _paths(groups, plain)
    quant, rows = _by_module(frozen["quant"], paths), _by_module(trainable, paths)

    def one(qd, e, r):
      return write_rows_into(self._dequantize(qd, e, dtype), e.idx, r).reshape(e.shape)

    kernels = {e.path: one(quant[e.path], e, _rows(self.plan, rows, e.path)) for e in plain}
    for g in groups:
      r = _scaled(rows[g.path]["rows"], _group_scale(self.plan, g))
      per = [one(_layer_slice(quant[g.path], i), e, r[i]) for i, e in enumerate(g.entries)]
      kernels[g.path] = jnp.stack(per)
    return _set_kernels(frozen["params"], kernels)

  def num_trainable(self, trainable=None) -> int:
    return self.plan.num_trainable()


@dataclasses.dataclass(frozen=True)
class PacaInt8(_QuantPaca, _Int8Store):
  """Quantised PaCA: frozen int8 base (per-output-channel absmax), selected rows in float32.

  The targeted kernels leave the params tree; ``frozen = {"params": rest, "quant": {path: {"q",
  "qscale"}}}``. The selected rows are zeroed before quantising, so the base never holds them.
  """

  plan: Plan
  name: str = "paca_int8"


@dataclasses.dataclass(frozen=True)
class PacaNf4(_QuantPaca, _Nf4Store):
  """QPaCA on a 4-bit NormalFloat base (QLoRA's NF4, see ``paca_jax/_src/nf4.py``).

  The targeted kernels leave the params tree; ``frozen = {"params": rest, "quant": {path: NF4
  arrays}}``, each kernel quantised in PyTorch orientation ``(out, in)`` with its selected rows
  zeroed (so the base never holds them), blocks of ``block_size`` (QLoRA: 64), optionally with
  double-quantised scales. The rows are float32 and enter the matmul unquantised; the base is
  dequantised (to the activation dtype) inside the partial matmul.
  """

  plan: Plan
  block_size: int = 64
  double_quant: bool = False
  name: str = "paca_nf4"


# ------------------------------------------------------------------------------------ LoRA


@dataclasses.dataclass(frozen=True)
class LoraPlan:
  """Static LoRA plan: adapted module paths and kernel shapes, rank and alpha (scale alpha/r)."""

  entries: tuple[PlanEntry, ...]
  rank: int
  alpha: float

  @property
  def paths(self):
    return tuple(e.path for e in self.entries)

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def __getitem__(self, path):
    for e in self.entries:
      if e.path == path:
        return e
    raise KeyError(path)

  def __iter__(self):
    return iter(self.entries)

  def num_trainable(self) -> int:
    return sum(self.rank * (e.in_features + e.out_features) for e in self.entries)


def lora_plan(params, targets, rank: int, alpha: float | None = None) -> LoraPlan:
  """LoRA on every targeted Dense kernel; ``alpha`` defaults to ``rank`` (scale 1).

  Raises:
    ValueError: nothing matched, or a non-positive rank.
  """
  if not isinstance(rank, int | np.integer) or rank <= 0:
    raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
  kernels = find_kernels(params)
  paths = match_targets(sorted(kernels), targets)
  if not paths:
    raise ValueError(
      f"target pattern {targets!r} matches no Dense kernel; module paths are: {sorted(kernels)}"
    )
  entries = tuple(PlanEntry(p, (), tuple(int(s) for s in kernels[p].shape)) for p in paths)
  return LoraPlan(entries, int(rank), float(rank if alpha is None else alpha))


class _LoraBody:
  """LoRA ``y = base(x) + (alpha / r) * (x @ A) @ B`` over a base that a subclass provides.

  ``_frozen(params)`` builds the frozen tree, ``_base_call(frozen)`` answers one intercepted
  module call with ``(x in the compute dtype, base output, finish)``, and ``_base_kernel(frozen,
  dtype)`` gives each base kernel as float32 ``(in, out)`` with the dtype the merged kernel gets.
  """

  def init(self, params, key=None):
    params = _unwrap(params)
    key = jax.random.key(0) if key is None else key
    groups, plain = _split(self.plan.entries, params)

    def one(e):
      k = jax.random.fold_in(key, path_seed(e.path))
      bound = 1.0 / np.sqrt(e.in_features)
      a = jax.random.uniform(k, (e.in_features, self.plan.rank), jnp.float32, -bound, bound)
      return {"a": a, "b": jnp.zeros((self.plan.rank, e.out_features), jnp.float32)}

    out = {e.path: one(e) for e in plain}
    for g in groups:  # layer i's adapters are those of the unrolled module layers_i/...
      out[g.path] = _stack_trees([one(e) for e in g.entries])
    return self._frozen(params), _nested(out)

  def prepare(self, frozen, trainable):
    return frozen

  def model_params(self, frozen, trainable):
    groups, _ = _split(self.plan.entries, self._layout(frozen))
    ab = _by_module(trainable, [g.path for g in groups])
    data = {g.path: dict(ab[g.path]) for g in groups}
    if groups and self._layout(frozen) is not frozen:  # a quantised base travels along
      qd = _by_module(frozen["quant"], [g.path for g in groups])
      for g in groups:
        data[g.path]["quant"] = qd[g.path]
    return _inject(self._rest(frozen), data)

  def context(self, frozen, trainable):
    scale, base = self.plan.scale, self._base_call(frozen)
    groups, plain = _split(self.plan.entries, self._layout(frozen))
    gmap = {g.path: g for g in groups}
    paths = [e.path for e in plain]
    adapters = _by_module(trainable, paths)

    def compute(module, x, path, next_fun):
      if path in gmap:
        ab = _layer_data(module, path)
        e, qd = dataclasses.replace(gmap[path].first, path=path), ab.get("quant")
      else:
        ab, e, qd = adapters[path], self.plan[path], None
      xd, y, finish = base(module, x, e, qd, next_fun)
      dt = xd.dtype
      delta = jnp.matmul(jnp.matmul(xd, ab["a"].astype(dt)), ab["b"].astype(dt))
      return finish(y + (scale * delta).reshape(y.shape).astype(dt))

    return _intercepting(paths + list(gmap), compute)

  def _merge(self, frozen, trainable, dtype):
    base = self._base_kernel(frozen, dtype)
    groups, plain = _split(self.plan.entries, self._layout(frozen))
    adapters = _by_module(trainable, _paths(groups, plain))
    kernels = {}
    for e in plain:
      k, out_dtype = base(e)
      ab = adapters[e.path]
      k = k + self.plan.scale * (ab["a"] @ ab["b"])
      kernels[e.path] = k.reshape(e.shape).astype(out_dtype)
    for g in groups:
      k, out_dtype = base(g)
      ab = adapters[g.path]
      k = k + self.plan.scale * jnp.einsum("lir,lro->lio", ab["a"], ab["b"])
      kernels[g.path] = k.reshape(g.layers, *g.shape).astype(out_dtype)
    return _set_kernels(self._rest(frozen), kernels)

  def num_trainable(self, trainable=None) -> int:
    return self.plan.num_trainable()


@dataclasses.dataclass(frozen=True)
class Lora(_LoraBody):
  """LoRA baseline: ``y = x @ W + (alpha / r) * (x @ A) @ B``, A ``(in, r)``, B ``(r, out)``.

  A is initialised like PEFT (uniform in ``±1/sqrt(in)``, per-path key), B with zeros; both float32.
  """

  plan: LoraPlan
  name: str = "lora"

  def _frozen(self, params):
    return params

  def _layout(self, frozen):
    return frozen

  def _rest(self, frozen):
    return frozen

  def _base_call(self, frozen):
    def call(module, x, e, qd, next_fun):
      y = next_fun(x)  # the module itself, bias included
      return x.astype(y.dtype), y, lambda out: out

    return call

  def _base_kernel(self, frozen, dtype):
    flat = _flat(frozen)

    def kernel(e):  # an entry (in, out) or a stacked group (L, in, out)
      k = flat[e.path + "/kernel"]
      shape = _g3(e) if isinstance(e, LayerGroup) else (e.in_features, e.out_features)
      return k.astype(jnp.float32).reshape(shape), k.dtype

    return kernel

  def merge(self, frozen, trainable):
    return self._merge(frozen, trainable, None)


@dataclasses.dataclass(frozen=True)
class LoraNf4(_LoraBody, _Nf4Store):
  """QLoRA-style baseline: LoRA (as :class:`Lora`) on the same NF4 base as :class:`PacaNf4`.

  The targeted kernels are NF4 (whole, no rows zeroed); the adapters ``a``/``b`` are float32.
  """

  plan: LoraPlan
  block_size: int = 64
  double_quant: bool = False
  name: str = "lora_nf4"

  def _frozen(self, params):
    return _quantise(self, params, self.plan, zero_rows=False)

  def _layout(self, frozen):
    return frozen["quant"]

  def _rest(self, frozen):
    return frozen["params"]

  def _base_call(self, frozen):
    groups, plain = _split(self.plan.entries, frozen["quant"])
    quant = _by_module(frozen["quant"], [e.path for e in plain])

    def call(module, x, e, qd, next_fun):
      _, out_shape = _dense_geometry(module, e.shape)
      dtype = module.dtype or x.dtype
      xd = x.astype(dtype)
      b = _bias(module, dtype, out_shape)

      def finish(y):
        y = y if b is None else y + b
        return y.reshape(*x.shape[:-1], *out_shape)

      return xd, self._matmul(xd, quant[e.path] if qd is None else qd, e), finish

    return call

  def _base_kernel(self, frozen, dtype):
    groups, plain = _split(self.plan.entries, frozen["quant"])
    quant = _by_module(frozen["quant"], _paths(groups, plain))

    def kernel(e):
      if isinstance(e, LayerGroup):
        qd = quant[e.path]
        per = [
          self._dequantize(_layer_slice(qd, i), x, jnp.float32) for i, x in enumerate(e.entries)
        ]
        return jnp.stack(per), dtype
      return self._dequantize(quant[e.path], e, jnp.float32), dtype

    return kernel

  def merge(self, frozen, trainable, dtype=jnp.float32):
    return self._merge(frozen, trainable, dtype)


# ------------------------------------------------------------------------------------ full


@dataclasses.dataclass(frozen=True)
class Full:
  """Full fine-tuning baseline: every parameter trainable, float32 masters, nothing frozen."""

  name: str = "full"

  def init(self, params, key=None):
    del key
    params = _unwrap(params)
    return {}, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)

  def prepare(self, frozen, trainable):
    return frozen

  def model_params(self, frozen, trainable):
    return trainable

  def context(self, frozen, trainable):
    return contextlib.nullcontext()

  def merge(self, frozen, trainable):
    return trainable

  def num_trainable(self, trainable=None) -> int:
    if trainable is None:
      raise ValueError("Full.num_trainable needs the trainable tree")
    return sum(int(np.prod(a.shape)) for a in traverse_util.flatten_dict(trainable).values())
