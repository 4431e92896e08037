"""Flax Linen modules of the decoder-only language models of the architecture registry.

Llama 2/3/3.x, Mistral, Qwen2/3, Phi-3, Gemma 2/3 and GPT-2 share these modules; their differences
are static fields of ``ModelConfig`` (q/k norms, Gemma's sandwich norms and soft-capping, local and
global layers, partial and long-context RoPE).

Every decoder layer, its attention and its MLP are named Linen modules:

  embed, [wpe], layers_0 .. layers_{L-1} (DecoderLayer: input_norm, attn, post_attention_norm, mlp),
  norm, [lm_head]

so an interceptor (``flax.linen.intercept_methods``) can address the residual-stream output of
decoder layer ``i`` as the return value of ``DecoderLayer.__call__`` at module path
``("layers_i",)``.

With ``ModelConfig.scan_layers`` the layers run through one ``nn.scan`` instead: a single
``DecoderLayer`` named ``layers`` whose parameters (and KV cache, and sown intermediates) carry a
leading layer axis. Its ``__call__`` then receives the layer index as a traced scalar (the
``layer`` argument; ``None`` when unrolled), so interceptors select per-layer values from stacked
arrays; :func:`layer_of` gives an interceptor the index either way. The same index selects the
layer's attention window and RoPE where layers differ (Gemma 2/3's sliding and global layers:
:func:`layer_kinds`, :func:`layer_window`, :func:`layer_rope`), so one scanned body serves both. :func:`stack_layers` and
:func:`unstack_layers` convert parameter trees between the two layouts (checkpoints, HF weight maps
and exporters use the per-layer one). ``ModelConfig.remat`` wraps each layer in ``nn.remat``.

Kernels follow the Flax ``(in, out)`` convention. Key/value caching uses Flax's mutable ``cache``
collection (one fixed-length buffer per layer), so a layer's ``__call__`` returns only the hidden
states, with or without a cache.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsteer._src.models.config import ModelConfig, rope_spec

Dtype = Any
_NEG = -1e30  # masked-score value: finite, so fully masked rows stay NaN-free


class RMSNorm(nn.Module):
  """RMSNorm computed in float32: ``scale * x / sqrt(mean(x^2) + eps)``.

  ``plus_one`` (Gemma): the weight is stored as ``scale - 1`` and the product is taken in float32
  before the cast, as transformers' ``Gemma2RMSNorm`` does.
  """

  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  plus_one: bool = False

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    if self.plus_one:
      return (xf * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
    # HF Llama casts back to the input dtype before multiplying by the weight.
    return scale.astype(self.dtype) * xf.astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm (GPT-2) computed in float32."""

  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def _dense(features, use_bias, cfg_dtype, param_dtype, name):
  return nn.Dense(
    features,
    use_bias=use_bias,
    dtype=cfg_dtype,
    param_dtype=param_dtype,
    kernel_init=nn.initializers.normal(0.02),
    name=name,
  )


def apply_rope(x, positions, inv_freq, factor: float = 1.0):
  """Rotary embedding, HF ``rotate_half`` layout. x: (B, T, H, Dh); positions: (B, T).

  ``inv_freq`` (R/2,) may cover only the first R dims of each head (partial rotary); ``factor``
  scales cos and sin (longrope's attention factor).
  """
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # (B, T, R/2)
  emb = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb) * factor, jnp.sin(emb) * factor
  xf = x.astype(jnp.float32)
  r = emb.shape[-1]
  xr, rest = xf[..., :r], xf[..., r:]
  rot = jnp.concatenate([-xr[..., r // 2 :], xr[..., : r // 2]], axis=-1)
  return jnp.concatenate([xr * cos + rot * sin, rest], axis=-1).astype(x.dtype)


def layer_kinds(cfg: ModelConfig):
  """``(kind, first)``: each layer's kind (0 or 1; 1 = sliding-window attention, with Gemma 3's
  local RoPE base) as an int32 numpy array (L,), and the first layer of each kind (``None`` where
  no layer has it). Layers of one kind share their attention window and RoPE."""
  kind = np.asarray([cfg.layer_is_sliding(i) for i in range(cfg.num_layers)], np.int32)
  first = tuple(int(np.argmax(kind == k)) if (kind == k).any() else None for k in (0, 1))
  return kind, first


def _traced_kind(cfg: ModelConfig, layer):
  """The kind (``layer_kinds``) of a traced layer index, or the first layer when all are alike."""
  kind, first = layer_kinds(cfg)
  if None in first:  # one kind only: a static layer stands for all
    return next(f for f in first if f is not None), None
  return None, jnp.asarray(kind)[layer]


def layer_rope(cfg: ModelConfig, layer, positions):
  """``(inv_freq, factor)`` of ``layer`` for this call (longrope picks its long set per call).

  ``layer`` may be a traced index (scanned layers): the RoPE of each layer kind is computed and
  the layer's own selected (``jnp.where``: the values are those of the unrolled layer, bit for
  bit).
  """
  if not isinstance(layer, int):
    static, kind = _traced_kind(cfg, layer)
    if kind is None:
      return layer_rope(cfg, static, positions)
    _, first = layer_kinds(cfg)
    (inv0, f0), (inv1, f1) = (layer_rope(cfg, f, positions) for f in first)
    inv = jnp.where(kind == 1, inv1, inv0)
    return inv, (f0 if f0 == f1 else jnp.where(kind == 1, f1, f0))
  spec = rope_spec(cfg, layer)
  inv = jnp.asarray(spec.inv_freq, jnp.float32)
  if spec.long_inv_freq is not None:
    long = jnp.asarray(spec.long_inv_freq, jnp.float32)
    inv = jnp.where(jnp.max(positions) + 1 > spec.original_max, long, inv)
  return inv, spec.attention_factor


def activation(name: str):
  return {
    "silu": nn.silu,
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  }[name]


# A global layer's window under scanned mixed layers: ``k > q - window`` holds for every slot.
_NO_WINDOW = np.iinfo(np.int32).max


def layer_window(cfg: ModelConfig, layer):
  """The sliding window of ``layer`` (``None``: global attention). For a traced ``layer`` (scanned
  layers mixing sliding and global attention) an int32 scalar: ``sliding_window`` or, for a
  global layer, the int32 maximum (no slot lies outside it; slots are non-negative)."""
  if not isinstance(layer, int):
    static, kind = _traced_kind(cfg, layer)
    if kind is None:
      return layer_window(cfg, static)
    return jnp.where(kind == 1, jnp.int32(cfg.sliding_window), jnp.int32(_NO_WINDOW))
  return cfg.sliding_window if cfg.layer_is_sliding(layer) else None


def attention_mask(q_pos, k_pos, kv_mask, sliding_window=None):
  """Boolean attention mask (B, 1, T, S): causal by absolute slot, key padding, sliding window."""
  allowed = k_pos[:, None, :] <= q_pos[:, :, None]
  if sliding_window is not None:
    allowed &= k_pos[:, None, :] > q_pos[:, :, None] - sliding_window
  allowed &= kv_mask[:, None, :].astype(bool)
  return allowed[:, None]


def take_positions(a, index):
  """``a`` (B, T, ...) at the positions ``index`` (B, n) of each row: (B, n, ...)."""
  index = index.reshape(index.shape + (1,) * (a.ndim - 2))
  return jnp.take_along_axis(a, index.astype(jnp.int32), axis=1)


def attend(q, k, vt, allowed, scale: float, softcap: float | None = None):
  """Grouped-query attention: ``softmax(mask(cap(q k^T * scale))) v``, as JAX's XLA
  ``dot_product_attention`` computes it (scores and softmax in float32, masked scores set to a
  large finite negative number), with Gemma 2's optional soft-capping of the scores.

  q: (B, T, H, Dh); k: (B, KVH, S, Dh); vt: values transposed, (B, KVH, Dh, S); allowed: boolean
  (B, 1, T, S). Returns (B, T, H, Dh). The query heads of a group share their key/value head.

  The mask is added (0 or the large negative number) and the softmax's normalisation is applied
  after the value product, to (T, Dh) instead of (T, S) entries per head, as flash attention
  does; the maximum is a constant for autodiff (the softmax does not depend on it). Measured on
  the 31.6M Llama of ``experiments.bench_models`` (one pinned core, alternated in one process):
  prefill of 4 x 256 tokens 1381-1501 vs 1235-1397 tokens/s with ``jax.nn.softmax`` and a
  select; 4 x 64 tokens and IG unchanged within noise.
  """
  b, t, h, dh = q.shape
  kvh = k.shape[1]
  qg = q.reshape(b, t, kvh, h // kvh, dh)
  scores = jnp.einsum(
    "btkgd,bksd->bkgts", qg, k.astype(q.dtype), preferred_element_type=jnp.float32
  )
  if softcap is None:
    scores = scores * jnp.float32(scale)
  else:
    scores = jnp.tanh(scores * scale / softcap) * softcap
  scores = scores + jnp.where(allowed, 0.0, _NEG).astype(jnp.float32)[:, :, None]
  p = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
  norm = jnp.transpose(jnp.sum(p, axis=-1), (0, 3, 1, 2))[..., None]  # (B, T, KVH, G, 1)
  out = jnp.einsum("bkgts,bkds->btkgd", p.astype(vt.dtype), vt, preferred_element_type=jnp.float32)
  return (out / norm).reshape(b, t, h, dh).astype(q.dtype)


class Attention(nn.Module):
  """Multi-head / grouped-query self-attention with RoPE (Llama family) or without (GPT-2).

  Scores and softmax go through :func:`attend` (the computation of JAX's XLA
  ``dot_product_attention``, on the cache's layouts, with Gemma 2's soft-capping);
  ``implementation="cudnn"`` (GPU, fp16/bf16 only) sends uncapped attention to
  ``jax.nn.dot_product_attention``'s cuDNN kernel instead. ``None`` and ``"xla"`` both mean
  :func:`attend`.
  """

  config: ModelConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  implementation: str | None = None
  layer_idx: int = 0

  @nn.compact
  def __call__(
    self, x, positions, slots, kv_mask, decode: bool = False, layer=None, query_index=None
  ):
    cfg = self.config
    # the traced layer index under nn.scan (its window and RoPE), else the static one
    li = self.layer_idx if layer is None else layer
    b, t, _ = x.shape
    h, kvh, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    # query_index (B, n): queries (and outputs) at these positions only; keys and values at all.
    xq, q_pos, q_slots = x, positions, slots
    if query_index is not None:
      xq, q_pos, q_slots = (take_positions(a, query_index) for a in (x, positions, slots))
    tq = xq.shape[1]
    q = _dense(h * dh, cfg.attention_bias, self.dtype, self.param_dtype, "q_proj")(xq)
    k = _dense(kvh * dh, cfg.attention_bias, self.dtype, self.param_dtype, "k_proj")(x)
    v = _dense(kvh * dh, cfg.attention_bias, self.dtype, self.param_dtype, "v_proj")(x)
    q = q.reshape(b, tq, h, dh)
    k = k.reshape(b, t, kvh, dh)
    v = v.reshape(b, t, kvh, dh)
    if cfg.qk_norm:
      kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, plus_one=cfg.norm_plus_one)
      q = RMSNorm(cfg.norm_eps, name="q_norm", **kw)(q)
      k = RMSNorm(cfg.norm_eps, name="k_norm", **kw)(k)
    if not cfg.is_gpt2:
      inv_freq, factor = layer_rope(cfg, li, positions)
      q = apply_rope(q, q_pos, inv_freq, factor)
      k = apply_rope(k, positions, inv_freq, factor)

    # Keys are kept as (B, KVH, S, Dh) and values transposed, (B, KVH, Dh, S): the layouts the
    # two attention dots read (contracted axis last), so a decode step writes its new entries into
    # the cache and copies nothing else (slot-major buffers were transposed whole every step).
    k, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 3, 1)
    k_slots = slots
    if decode:
      # kv_mask spans the whole cache; write this chunk at cache_index and attend over the buffer.
      length = kv_mask.shape[1]
      ck = self.variable("cache", "cached_key", jnp.zeros, (b, kvh, length, dh), k.dtype)
      cv = self.variable("cache", "cached_value", jnp.zeros, (b, kvh, dh, length), vt.dtype)
      idx = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
      i = idx.value
      ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, 0, i, 0))
      cv.value = jax.lax.dynamic_update_slice(cv.value, vt.astype(cv.value.dtype), (0, 0, 0, i))
      idx.value = i + t
      k, vt = ck.value, cv.value
      k_slots = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None], (b, length))

    # Causality by absolute slot, key padding and the sliding window (of this layer) all live in
    # one boolean mask (B, 1, T, S): with a KV cache the query's slot is not its row index.
    window = layer_window(cfg, li)
    scale = 1.0 / np.sqrt(
      cfg.query_pre_attn_scalar if cfg.query_pre_attn_scalar is not None else dh
    )
    allowed = attention_mask(q_slots, k_slots, kv_mask, window)
    if self.implementation not in (None, "xla", "cudnn"):
      raise ValueError(
        f"unknown attention implementation {self.implementation!r}; use None, 'xla' or 'cudnn'"
      )
    if self.implementation == "cudnn" and cfg.attn_logit_softcapping is None:
      out = jax.nn.dot_product_attention(
        q,
        k.transpose(0, 2, 1, 3).astype(q.dtype),
        vt.transpose(0, 3, 1, 2).astype(q.dtype),
        mask=allowed,
        scale=float(scale),
        implementation="cudnn",
      )
    else:
      out = attend(q, k, vt, allowed, float(scale), cfg.attn_logit_softcapping)
    return _dense(cfg.hidden_size, cfg.attention_out_bias, self.dtype, self.param_dtype, "o_proj")(
      out.reshape(b, tq, h * dh)
    )


class MLP(nn.Module):
  """Gated SiLU MLP (Llama family) or GELU MLP (GPT-2)."""

  config: ModelConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    f, d = cfg.intermediate_size, cfg.hidden_size
    if cfg.is_gpt2:
      up = _dense(f, True, self.dtype, self.param_dtype, "up_proj")(x)
      return _dense(d, True, self.dtype, self.param_dtype, "down_proj")(
        activation(cfg.hidden_act)(up)
      )
    gate = _dense(f, cfg.mlp_bias, self.dtype, self.param_dtype, "gate_proj")(x)
    up = _dense(f, cfg.mlp_bias, self.dtype, self.param_dtype, "up_proj")(x)
    act = activation(cfg.hidden_act)
    return _dense(d, cfg.mlp_bias, self.dtype, self.param_dtype, "down_proj")(act(gate) * up)


def _norm(cfg: ModelConfig, name: str, **kw):
  if cfg.is_gpt2:
    return LayerNorm(cfg.norm_eps, name=name, **kw)
  return RMSNorm(cfg.norm_eps, name=name, plus_one=cfg.norm_plus_one, **kw)


class DecoderLayer(nn.Module):
  """Pre-norm decoder layer. Returns the residual stream after attention and MLP.

  Llama-like: ``x + attn(input_norm(x))``, then ``x + mlp(post_attention_norm(x))``. With
  ``sandwich_norms`` (Gemma 2/3): ``x + post_attention_norm(attn(input_norm(x)))``, then
  ``x + post_feedforward_norm(mlp(pre_feedforward_norm(x)))``.

  ``layer`` is the traced layer index under ``nn.scan`` (``None`` when the layers are unrolled;
  then ``layer_idx`` is the index): it selects the layer's attention window and RoPE (mixed
  sliding / global layers) and interceptors read it (``layer_of``).
  """

  config: ModelConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attn_implementation: str | None = None
  layer_idx: int = 0

  @nn.compact
  def __call__(
    self, x, positions, slots, kv_mask, decode: bool = False, layer=None, query_index=None
  ):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _norm(cfg, "input_norm", **kw)(x)
    attn = Attention(
      cfg, name="attn", implementation=self.attn_implementation, layer_idx=self.layer_idx, **kw
    )
    h = attn(h, positions, slots, kv_mask, decode, layer=layer, query_index=query_index)
    if query_index is not None:  # the output only at these positions (see CausalLM.__call__)
      x = take_positions(x, query_index)
    if cfg.sandwich_norms:
      x = x + _norm(cfg, "post_attention_norm", **kw)(h)
      h = _norm(cfg, "pre_feedforward_norm", **kw)(x)
      return x + _norm(cfg, "post_feedforward_norm", **kw)(MLP(cfg, name="mlp", **kw)(h))
    x = x + h
    h = _norm(cfg, "post_attention_norm", **kw)(x)
    return x + MLP(cfg, name="mlp", **kw)(h)


REMAT_POLICIES = {
  "full": None,  # jax.checkpoint's default: save nothing but the layer's inputs
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class _ScanStep(nn.Module):
  """One step of the scanned decoder: ``(x, layer) -> (layer's output, output or None)``.

  ``nn.share_scope`` puts the wrapped ``DecoderLayer``'s parameters directly under this module's
  scope, so the stacked tree reads ``layers/attn/q_proj/kernel`` like the per-layer
  ``layers_i/attn/q_proj/kernel``.
  """

  config: ModelConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attn_implementation: str | None = None

  def setup(self):
    block = _layer_class(self.config)
    self.layer = block(
      self.config,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      attn_implementation=self.attn_implementation,
      layer_idx=0,  # unused: the scanned layer index selects each layer's window and RoPE
    )
    nn.share_scope(self, self.layer)

  def __call__(self, x, layer, positions, slots, kv_mask, decode, keep):
    x = self.layer(x, positions, slots, kv_mask, decode, layer)
    return x, (x if keep else None)


def _layer_class(cfg: ModelConfig):
  if cfg.remat is None:
    return DecoderLayer
  # argnums count self as 0: decode (5) is a Python bool.
  return nn.remat(DecoderLayer, policy=REMAT_POLICIES[cfg.remat], static_argnums=(5,))


def layer_of(module, fargs, fkwargs):
  """The index of the ``DecoderLayer`` an interceptor sees: an int (unrolled layers, from the
  module name ``layers_i``), a traced int32 scalar (scanned layers) or ``None`` (not a decoder
  layer of a ``CausalLM``)."""
  traced = fargs[5] if len(fargs) > 5 else fkwargs.get("layer")
  if traced is not None:
    return traced
  name = module.name or ""
  if name.startswith("layers_") and name[7:].isdigit():
    return int(name[7:])
  return None


def stack_layers(params, num_layers: int):
  """Per-layer parameters (``layers_0`` .. ``layers_{L-1}``) -> stacked ``layers`` (leading axis
  L), for a ``CausalLM`` with ``scan_layers``. Works on any subtree holding the layers (a VLM's
  ``language_model``); other entries are kept as they are."""
  params = dict(params)
  names = [f"layers_{i}" for i in range(num_layers)]
  if all(n in params for n in names):
    layers = [params.pop(n) for n in names]
    params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return params
  return {k: stack_layers(v, num_layers) if isinstance(v, dict) else v for k, v in params.items()}


def unstack_layers(params):
  """Stacked ``layers`` (leading axis L) -> per-layer ``layers_0`` .. ``layers_{L-1}``: the
  inverse of :func:`stack_layers` (the layout of checkpoints, weight maps and exporters)."""
  params = dict(params)
  if "layers" in params and isinstance(params["layers"], dict):
    stacked = params.pop("layers")
    n = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(n):
      params[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return params
  return {k: unstack_layers(v) if isinstance(v, dict) else v for k, v in params.items()}


class CausalLM(nn.Module):
  """A decoder-only causal language model.

  Call with ``input_ids`` (B, T) or ``inputs_embeds`` (B, T, D). ``attention_mask`` (B, S) marks
  real tokens (1) and padding (0); without a cache S = T, with ``decode=True`` S is the cache length
  and the mask covers every cache slot. ``positions`` (B, T) are RoPE / learned positions (default:
  count of real tokens before each one); ``slots`` (B, T) are absolute cache slots (default
  ``arange(T)``) that define causality.
  """

  config: ModelConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attn_implementation: str | None = None  # jax.nn.dot_product_attention: None, "xla", "cudnn"

  def setup(self):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.embed = nn.Embed(
      cfg.vocab_size, cfg.hidden_size, embedding_init=nn.initializers.normal(0.02), **kw
    )
    if cfg.is_gpt2:
      self.wpe = nn.Embed(
        cfg.max_position_embeddings,
        cfg.hidden_size,
        embedding_init=nn.initializers.normal(0.01),
        **kw,
      )
    if cfg.scan_layers:
      # Params, KV cache and sown intermediates get a leading layer axis; the layer index is a
      # scanned input; positions, slots, mask and the static flags are broadcast.
      b = nn.broadcast
      self.layers = nn.scan(
        _ScanStep,
        variable_axes={"params": 0, "cache": 0, "intermediates": 0},
        split_rngs={"params": True},
        in_axes=(0, b, b, b, b, b),
        length=cfg.num_layers,
      )(cfg, attn_implementation=self.attn_implementation, **kw)
    else:
      block = _layer_class(cfg)
      self.layers = [
        block(
          cfg,
          name=f"layers_{i}",
          attn_implementation=self.attn_implementation,
          layer_idx=i,
          **kw,
        )
        for i in range(cfg.num_layers)
      ]
    self.norm = (
      LayerNorm(cfg.norm_eps, **kw)
      if cfg.is_gpt2
      else RMSNorm(cfg.norm_eps, plus_one=cfg.norm_plus_one, **kw)
    )
    if not cfg.tie_word_embeddings:
      self.lm_head = _dense(cfg.vocab_size, False, self.dtype, self.param_dtype, "lm_head")

  def _embed_scale(self):
    # Gemma: sqrt(D) rounded to the compute dtype, as transformers multiplies.
    return jnp.asarray(np.sqrt(self.config.hidden_size), self.dtype)

  def embed_tokens(self, input_ids):
    """Token embeddings (B, T, D): the input space of attribution (scaled for Gemma)."""
    x = self.embed(input_ids)
    return x * self._embed_scale() if self.config.scale_embeddings else x

  def mean_token_embedding(self):
    """The mean row of the (scaled) embedding table (D,), in the compute dtype."""
    m = jnp.mean(self.embed.embedding, axis=0).astype(self.dtype)
    return m * self._embed_scale() if self.config.scale_embeddings else m

  def head(self, x):
    """Float32 logits of the last decoder layer's outputs ``x`` (final norm, projection, cap).

    Position-wise, so callers may apply it to a subset of positions (attribution projects only
    the response positions onto the vocabulary).
    """
    x = self.norm(x)
    logits = self.embed.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
    logits = logits.astype(jnp.float32)
    if self.config.final_logit_softcapping is not None:
      cap = self.config.final_logit_softcapping
      logits = jnp.tanh(logits / cap) * cap
    return logits

  def __call__(
    self,
    input_ids=None,
    *,
    inputs_embeds=None,
    attention_mask=None,
    positions=None,
    slots=None,
    decode: bool = False,
    return_hidden: bool = False,
    last_layer_positions=None,
  ):
    """Logits (B, T, V) (and with ``return_hidden`` every layer's output).

    ``last_layer_positions`` (B, n) int: the last decoder layer computes its queries, attention
    output and MLP at these positions only (its keys and values at all): the logits and the last
    hidden state are then (B, n, ...), equal to the full ones at those positions. What an
    objective that reads a few positions needs (attribution projects only the response
    positions); unrolled layers and no KV cache only.
    """
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if last_layer_positions is not None and (decode or self.config.scan_layers):
      raise ValueError("last_layer_positions needs unrolled layers (scan_layers=False), no cache")
    x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    x = x.astype(self.dtype)
    b, t = x.shape[:2]
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), jnp.int32)
    if slots is None:
      slots = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None], (b, t))
    if positions is None:
      if decode:
        raise ValueError("positions are required with decode=True")
      positions = default_positions(attention_mask)
    if self.config.is_gpt2:
      x = x + self.wpe(positions)
    if self.config.scan_layers:
      index = jnp.arange(self.config.num_layers, dtype=jnp.int32)
      x, stacked = self.layers(x, index, positions, slots, attention_mask, decode, return_hidden)
      hidden = tuple(stacked) if return_hidden else ()
    else:
      hidden = []
      last = len(self.layers) - 1
      for i, layer in enumerate(self.layers):
        if i == last and last_layer_positions is not None:
          # positional: nn.remat's static_argnums count positions
          x = layer(x, positions, slots, attention_mask, decode, None, last_layer_positions)
        else:
          x = layer(x, positions, slots, attention_mask, decode)
        hidden.append(x)
    logits = self.head(x)
    if return_hidden:
      return logits, tuple(hidden)
    return logits


def default_positions(attention_mask):
  """Position of each token among the real tokens of its row (0 for left padding)."""
  m = attention_mask.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0).astype(jnp.int32)
