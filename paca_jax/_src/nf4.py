"""4-bit NormalFloat (NF4) frozen bases for QPaCA and QLoRA-style LoRA.

NF4 is QLoRA's data type (Dettmers, Pagnoni, Holtzman, Zettlemoyer, "QLoRA: Efficient Finetuning
of Quantized LLMs", NeurIPS 2023): 16 code values (quantiles of N(0, 1) scaled to [-1, 1], with
an exact zero), block-wise absmax scaling over blocks of 64 consecutive weights, and optional
double quantisation of the float32 block scales (8 bits, blocks of 256, after subtracting their
mean). The layout follows bitsandbytes: the weight in PyTorch orientation ``(out, in)`` is
flattened row-major, padded to a whole number of blocks, and two codes are packed per byte (the
first in the high nibble). Double quantisation here is symmetric int8 absmax per block of 256
centred scales (bitsandbytes uses its dynamic 8-bit map instead); both cost about 0.127 bits per
weight instead of 0.5.

Storage per weight: 4 bits + 32 / 64 (= 4.5 bits), or about 4.127 bits with double quantisation.

The matmuls dequantise inside a ``jax.custom_vjp`` (forward and backward), so the float weight is
a fused temporary, never a residual: the backward saves only ``x[..., idx]`` (PaCA) and the
compressed base.

Usage::

  q = quantize_nf4(w_out_in, block_size=64, double_quant=True)   # dict of arrays
  w = dequantize_nf4(q, (out, in), block_size=64)                # float32 (out, in)
  y = nf4_partial_matmul(x, q, p, idx, (out, in), 64)             # x @ w'.T, rows idx = p
  y = nf4_matmul(x, q, (out, in), 64)                             # x @ w.T (LoRA's frozen base)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "NF4_TABLE",
  "DQ_BLOCK",
  "dequantize_nf4",
  "nf4_matmul",
  "nf4_partial_matmul",
  "quantize_nf4",
]

# bitsandbytes' NF4 table (float32), as listed in the QLoRA paper's appendix.
NF4_TABLE = np.array(
  [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
  ],
  np.float32,
)
_MIDPOINTS = (NF4_TABLE[1:] + NF4_TABLE[:-1]) / 2
DQ_BLOCK = 256  # block size of the double quantisation of the scales (QLoRA)


def _blocks(n: int, block: int) -> int:
  return -(-n // block)


def quantize_nf4(w, block_size: int = 64, double_quant: bool = False) -> dict:
  """NF4 codes of ``w`` (any shape, flattened row-major) with per-block absmax scales.

  Returns:
    ``{"nf4": uint8 (ceil(n / block) * block / 2,), "absmax": float32 (n_blocks,)}``, or with
    ``double_quant`` ``{"nf4", "absmax_q": int8 (n_blocks padded to 256,), "absmax_scale":
    float32 (n_blocks / 256,), "absmax_mean": float32 ()}``.
  """
  if block_size <= 0 or block_size % 2:
    raise ValueError(f"NF4 block_size must be a positive even number, got {block_size}")
  flat = jnp.asarray(w, jnp.float32).reshape(-1)
  n = flat.shape[0]
  nb = _blocks(n, block_size)
  blocks = jnp.pad(flat, (0, nb * block_size - n)).reshape(nb, block_size)
  absmax = jnp.max(jnp.abs(blocks), axis=1)
  safe = jnp.where(absmax == 0, 1.0, absmax)
  codes = jnp.searchsorted(jnp.asarray(_MIDPOINTS), blocks / safe[:, None]).astype(jnp.uint8)
  codes = codes.reshape(-1, 2)
  out = {"nf4": (codes[:, 0] << 4) | codes[:, 1]}
  if not double_quant:
    out["absmax"] = absmax
    return out
  mean = jnp.mean(absmax)
  nd = _blocks(nb, DQ_BLOCK)
  c = jnp.pad(absmax - mean, (0, nd * DQ_BLOCK - nb)).reshape(nd, DQ_BLOCK)
  scale = jnp.max(jnp.abs(c), axis=1) / 127.0
  scale = jnp.where(scale == 0, 1.0, scale)
  q = jnp.clip(jnp.round(c / scale[:, None]), -127, 127).astype(jnp.int8)
  out.update(absmax_q=q.reshape(-1), absmax_scale=scale, absmax_mean=mean)
  return out


def _absmax(q, nb: int):
  if "absmax" in q:
    return q["absmax"]
  a = q["absmax_q"].astype(jnp.float32).reshape(-1, DQ_BLOCK) * q["absmax_scale"][:, None]
  return a.reshape(-1)[:nb] + q["absmax_mean"]


def dequantize_nf4(q, shape, block_size: int = 64, dtype=jnp.float32):
  """The float weight of shape ``shape`` (the shape given to :func:`quantize_nf4`)."""
  n = int(np.prod(shape))
  nb = _blocks(n, block_size)
  packed = q["nf4"]
  codes = jnp.stack([packed >> 4, packed & 15], axis=-1).reshape(nb, block_size)
  vals = jnp.asarray(NF4_TABLE)[codes.astype(jnp.int32)] * _absmax(q, nb)[:, None]
  return vals.reshape(-1)[:n].reshape(shape).astype(dtype)


def _mm_t(x, w):
  """``x @ w.T`` for ``w`` ``(out, in)``, contracting without a transposed copy."""
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))


def _mm(dy, w):
  """``dy @ w`` for ``w`` ``(out, in)``."""
  return jax.lax.dot_general(dy, w, (((dy.ndim - 1,), (0,)), ((), ())))


def _no_grad(q):
  return jax.tree.map(lambda a: np.zeros(a.shape, jax.dtypes.float0), q)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _nf4_pmm(x, q, p, idx, shape, block):
  cdt = x.dtype
  y = _mm_t(x, dequantize_nf4(q, shape, block, cdt))
  x_sel = x.at[..., idx].get(indices_are_sorted=True, unique_indices=True)
  return y + jnp.matmul(x_sel, p.astype(cdt))


def _nf4_pmm_fwd(x, q, p, idx, shape, block):
  x_sel = x.at[..., idx].get(indices_are_sorted=True, unique_indices=True)
  return _nf4_pmm(x, q, p, idx, shape, block), (x_sel, q, p, idx)


def _nf4_pmm_bwd(shape, block, res, dy):
  x_sel, q, p, idx = res
  cdt = x_sel.dtype
  dys = dy.astype(cdt)
  dx = _mm(dys, dequantize_nf4(q, shape, block, cdt))
  dx = dx.at[..., idx].add(_mm_t(dys, p.astype(cdt)), indices_are_sorted=True)
  dp = jnp.einsum("...r,...o->ro", x_sel, dys, preferred_element_type=jnp.float32)
  idx_ct = np.zeros(np.shape(idx), jax.dtypes.float0)
  return dx, _no_grad(q), dp.astype(p.dtype), idx_ct


_nf4_pmm.defvjp(_nf4_pmm_fwd, _nf4_pmm_bwd)


def nf4_partial_matmul(x, q, p, idx, shape, block_size: int = 64):
  """``x @ w'.T``: ``w'`` ``(out, in)`` is the NF4 base with input channels ``idx`` set to ``p.T``.

  The base must hold zeros in columns ``idx`` (PaCA quantises the kernel with its selected rows
  zeroed). ``p`` is ``(r, out)`` (Flax rows); gradients for ``x`` and ``p`` only; the backward
  saves ``x[..., idx]`` and re-dequantises the base inside the GEMM.
  """
  return _nf4_pmm(x, q, p, jnp.asarray(idx, jnp.int32), tuple(shape), int(block_size))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _nf4_mm(x, q, shape, block):
  return _mm_t(x, dequantize_nf4(q, shape, block, x.dtype))


def _nf4_mm_fwd(x, q, shape, block):
  return _nf4_mm(x, q, shape, block), (q, jnp.zeros((0,), x.dtype))


def _nf4_mm_bwd(shape, block, res, dy):
  q, proto = res
  return _mm(dy.astype(proto.dtype), dequantize_nf4(q, shape, block, proto.dtype)), _no_grad(q)


_nf4_mm.defvjp(_nf4_mm_fwd, _nf4_mm_bwd)


def nf4_matmul(x, q, shape, block_size: int = 64):
  """``x @ w.T`` for the NF4 weight ``w`` ``(out, in)``; a gradient for ``x`` only."""
  return _nf4_mm(x, q, tuple(shape), int(block_size))
