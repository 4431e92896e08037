"""A Flax LSTM language model whose time loop is one ``lax.scan`` over all layers.

Recoding (Ulmer 2021, arXiv:2101.00674) corrects the states of every layer at step t with a
gradient that flows through the layers above at the same step, so the layers cannot be scanned
one after another (``nn.RNN``); the whole stack is stepped together.

Usage::

  cfg = LMConfig(vocab_size=10000, embed_dim=200, hidden_dim=200, num_layers=2, dropout=0.2)
  model = LSTMLM(cfg)
  params = init_params(model, jax.random.key(0))
  state = zero_state(cfg, batch_size=20)
  out = lm_forward(model, params, x, y, state, recoding=RecodingConfig("surprisal"),
                   step_size=0.5)   # out.nll (B, T), out.state
"""

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recoder._src.recode import (
  RecodingConfig,
  _check_step_size,
  _finite,
  apply_step,
  get_signal,
  node_gradient,
  step_sizes,
)

__all__ = [
  "check_token_ids",
  "LMConfig",
  "LSTMLM",
  "ForwardOut",
  "init_params",
  "lm_forward",
  "zero_state",
]


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Static model structure.

  Attributes:
    vocab_size: number of word types V.
    embed_dim, hidden_dim, num_layers: sizes (E, H, L).
    dropout: rate on the embeddings, between layers and before the decoder (training only).
    tie_weights: share the embedding matrix with the decoder (needs E == H).
    num_members: K > 1 gives an anchored ensemble of K decoders; the output is the mean of the
      member logits.
    init_scale: embeddings and decoder are U(-s, s); LSTM weights are U(+-1/sqrt(H)).
  """

  vocab_size: int
  embed_dim: int = 200
  hidden_dim: int = 200
  num_layers: int = 2
  dropout: float = 0.2
  tie_weights: bool = False
  num_members: int = 1
  init_scale: float = 0.1

  def __post_init__(self):
    for name in ("vocab_size", "embed_dim", "hidden_dim", "num_layers", "num_members"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.tie_weights and self.embed_dim != self.hidden_dim:
      raise ValueError("tie_weights needs embed_dim == hidden_dim")
    if self.tie_weights and self.num_members > 1:
      raise ValueError("an ensemble (num_members > 1) needs untied decoders")


def _uniform(scale):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


class LSTMLM(nn.Module):
  """Parameters and per-step pieces of the LSTM LM; :func:`lm_forward` runs the scan."""

  cfg: LMConfig

  def setup(self):
    c = self.cfg
    self.embedding = self.param("embedding", _uniform(c.init_scale), (c.vocab_size, c.embed_dim))
    s = 1.0 / np.sqrt(c.hidden_dim)
    self.w_ih = [
      self.param(
        f"w_ih_{l}", _uniform(s), (c.embed_dim if l == 0 else c.hidden_dim, 4 * c.hidden_dim)
      )
      for l in range(c.num_layers)
    ]
    self.w_hh = [
      self.param(f"w_hh_{l}", _uniform(s), (c.hidden_dim, 4 * c.hidden_dim))
      for l in range(c.num_layers)
    ]
    self.b = [self.param(f"b_{l}", _uniform(s), (4 * c.hidden_dim,)) for l in range(c.num_layers)]
    if c.tie_weights:
      self.dec_w = None
    else:
      self.dec_w = self.param(
        "decoder_w", _uniform(c.init_scale), (c.num_members, c.hidden_dim, c.vocab_size)
      )
    self.dec_b = self.param("decoder_b", nn.initializers.zeros, (c.num_members, c.vocab_size))

  def embed(self, tokens):
    return jnp.take(self.embedding, tokens, axis=0)

  def gates(self, layer: int, x, h):
    return x @ self.w_ih[layer] + h @ self.w_hh[layer] + self.b[layer]

  def decode_members(self, h):
    """Logits of every member, (K, ..., V)."""
    if self.cfg.tie_weights:
      return (h @ self.embedding.T)[None] + self.dec_b.reshape((1,) * (h.ndim) + (-1,))[0][None]
    out = jnp.einsum("...h,khv->k...v", h, self.dec_w)
    return out + self.dec_b.reshape((self.cfg.num_members,) + (1,) * (h.ndim - 1) + (-1,))

  def decoder_rows(self):
    """The (V, H) matrix whose row ``w`` is d logits[w] / d h (the member mean for an ensemble)."""
    if self.cfg.tie_weights:
      return self.embedding
    return jnp.mean(self.dec_w, axis=0).T

  def decode(self, h):
    """Output logits (mean of member logits for an ensemble), (..., V)."""
    if self.cfg.num_members == 1:
      if self.cfg.tie_weights:
        return h @ self.embedding.T + self.dec_b[0]
      return h @ self.dec_w[0] + self.dec_b[0]
    return jnp.mean(self.decode_members(h), axis=0)

  def __call__(self, tokens):
    x = self.embed(tokens)
    h = jnp.zeros(x.shape[:-1] + (self.cfg.hidden_dim,), x.dtype)
    for l in range(self.cfg.num_layers):
      h = jnp.tanh(self.gates(l, x if l == 0 else h, h)[..., : self.cfg.hidden_dim])
    return self.decode_members(h)


def init_params(model: LSTMLM, key) -> dict:
  return model.init(key, jnp.zeros((1, 1), jnp.int32))["params"]


def zero_state(cfg: LMConfig, batch_size: int, dtype=jnp.float32) -> dict:
  """``{"h": (L, B, H), "c": (L, B, H)}`` zeros."""
  shape = (cfg.num_layers, batch_size, cfg.hidden_dim)
  return {"h": jnp.zeros(shape, dtype), "c": jnp.zeros(shape, dtype)}


class ForwardOut(NamedTuple):
  nll: jax.Array  # (B, T) -log p(target_t | inputs_<=t)
  state: dict  # final (recoded) state
  logprobs: Any  # (B, T, V) if requested, else None
  delta: Any  # (B, T) error signal before recoding (None without recoding)


def check_token_ids(ids, vocab_size: int, what: str = "token ids") -> None:
  """Raises ``ValueError`` for concrete ids outside ``[0, vocab_size)`` (tracers are skipped:
  ``jnp.take`` would silently clamp them, so callers check their data before jitting)."""
  if isinstance(ids, jax.core.Tracer):
    return
  arr = np.asarray(ids)
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
  if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
    raise ValueError(
      f"{what} outside the vocabulary [0, {vocab_size}): min {arr.min()}, max {arr.max()}"
    )


_COLUMNS_MIN_BATCH = 64


def _surprisal_closed_form(logits, rows, gold, target: str):
  """Surprisal ``-log p(target)``, the NLL of ``gold``, and d surprisal / d h in closed form.

  With ``logits = h @ rows.T + b``: d(-log p_t)/d h = ``rows.T @ (softmax - onehot(t))``
  = ``(e @ rows) / sum(e) - rows[t]`` with ``e = exp(logits - max)`` (the exponentials of the
  log-sum-exp, reused; one (B, V) x (V, H) matmul; no one-hot or second softmax). Returns
  ``(delta, nll, grad_h, logp)`` with ``logp`` the (B, V) log-probabilities.
  """
  shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  e = jnp.exp(shifted)
  s = jnp.sum(e, axis=-1, keepdims=True)
  log_s = jnp.log(s)
  gold = gold.astype(jnp.int32)
  nll = -(jnp.take_along_axis(shifted, gold[:, None], axis=-1) - log_s)[:, 0]
  if target == "argmax":
    t = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1).astype(jnp.int32)
    delta = -(jnp.take_along_axis(shifted, t[:, None], axis=-1) - log_s)[:, 0]
  else:
    t, delta = gold, nll
  rows, cols = rows if isinstance(rows, tuple) else (rows, None)
  prod = e @ rows if cols is None else jnp.einsum("bv,hv->bh", e, cols)
  grad_h = prod / s - jnp.take(rows, t, axis=0)
  return delta, nll, grad_h, shifted - log_s


def _dropout_mask(key, rate, shape, dtype):
  keep = 1.0 - rate
  return jax.random.bernoulli(key, keep, shape).astype(dtype) / keep


def lm_forward(
  model: LSTMLM,
  params,
  inputs,
  targets,
  state,
  *,
  recoding: RecodingConfig | None = None,
  step_size=0.0,
  step_params=None,
  key=None,
  train: bool = False,
  return_logprobs: bool = False,
  closed_form: bool = True,
) -> ForwardOut:
  """Runs the LM over ``inputs`` (B, T) with one ``lax.scan`` over time (all layers inside).

  With recoding, at every step t the states of all layers are corrected by one gradient step
  on the error signal. Signals that read the observed next token (surprisal) score the token
  with the *uncorrected* state first; the correction only affects steps > t, so the distribution
  for token t+1 depends on tokens <= t alone. Label-free signals re-decode from the corrected
  state (as in the paper).

  Args:
    model, params: the :class:`LSTMLM` and its parameters.
    inputs, targets: int (B, T); ``targets[:, t]`` is the token after ``inputs[:, t]``.
    state: ``{"h", "c"}`` of shape (L, B, H) carried in.
    recoding: static recoding configuration.
    step_size: fixed step size (traced; scalar or {"h", "c"} broadcastable to (L, B, H)).
    step_params: parameters of the learned / mlp step size.
    key: PRNG key for dropout and MC samples (required when ``train`` or for MC signals).
    train: apply dropout.
    return_logprobs: also return the (B, T, V) log-probabilities (for tests and plots).
    closed_form: for the surprisal signal (first order), take d surprisal / d h_top in closed
      form, ``W^T (softmax - onehot)``, reusing the forward pass's exponentials and one matmul
      with the decoder, and back-propagate only through the LSTM cells; ``False`` differentiates
      the whole error with ``jax.grad`` (same numbers up to rounding; slower).
  """
  cfg: LMConfig = model.cfg
  recoding = RecodingConfig() if recoding is None else recoding
  v = {"params": params}
  inputs = jnp.asarray(inputs)
  targets = jnp.asarray(targets)
  if inputs.ndim != 2 or inputs.shape != targets.shape:
    raise ValueError(
      f"inputs and targets must both be (batch, time); got {inputs.shape} and {targets.shape}"
    )
  check_token_ids(inputs, cfg.vocab_size, "inputs")
  check_token_ids(targets, cfg.vocab_size, "targets")
  B, T = inputs.shape
  L, H = cfg.num_layers, cfg.hidden_dim
  _check_step_size(step_size)
  needs_key = (train and cfg.dropout > 0) or (
    recoding.enabled and recoding.signal.startswith("mc_")
  )
  if needs_key and key is None:
    raise ValueError("a PRNG key is needed for dropout / MC-dropout")
  if key is None:
    key = jax.random.key(0)
  k_emb, k_mid, k_out, k_mc = jax.random.split(key, 4)

  emb = model.apply(v, inputs.T, method=LSTMLM.embed)  # (T, B, E)
  dtype = emb.dtype
  use_drop = train and cfg.dropout > 0
  if use_drop:
    emb = emb * _dropout_mask(k_emb, cfg.dropout, emb.shape, dtype)
    mid_masks = _dropout_mask(k_mid, cfg.dropout, (T, max(L - 1, 1), B, H), dtype)
    out_masks = _dropout_mask(k_out, cfg.dropout, (T, B, H), dtype)
  else:
    mid_masks = jnp.ones((T, 1, 1, 1), dtype)
    out_masks = jnp.ones((T, 1, 1), dtype)
  mc_keys = jax.random.split(k_mc, T)

  def layers(x, h_prev, c_prev, mid_mask, eps):
    hs, cs = [], []
    inp = x
    for l in range(L):
      z = model.apply(v, l, inp, h_prev[l], method=LSTMLM.gates)
      i, f, g, o = jnp.split(z, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c_prev[l] + jax.nn.sigmoid(i) * jnp.tanh(g)
      if eps is not None:
        c = c + eps["c"][l]
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      if eps is not None:
        h = h + eps["h"][l]
      hs.append(h)
      cs.append(c)
      inp = h * mid_mask[min(l, mid_mask.shape[0] - 1)] if l < L - 1 else h
    return {"h": jnp.stack(hs), "c": jnp.stack(cs)}

  decode = lambda h: model.apply(v, h, method=LSTMLM.decode)
  decode_members = lambda h: model.apply(v, h, method=LSTMLM.decode_members)

  if not recoding.enabled:

    def step(carry, xs):
      x, mid_mask, out_mask = xs
      nodes = layers(x, carry["h"], carry["c"], mid_mask, None)
      return nodes, nodes["h"][-1] * out_mask

    state, h_out = jax.lax.scan(step, state, (emb, mid_masks, out_masks))
    logits = decode(h_out)  # (T, B, V)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets.T[..., None], axis=-1)[..., 0]
    return ForwardOut(nll.T, state, jnp.swapaxes(logp, 0, 1) if return_logprobs else None, None)

  signal = get_signal(recoding.signal)
  redecode = recoding.does_redecode
  if closed_form and recoding.signal == "surprisal" and not recoding.second_order:
    rows = model.apply(v, method=LSTMLM.decoder_rows)  # (V, H), hoisted out of the time loop
    # From about 64 streams the (B, V) x (V, H) product is faster from an (H, V) copy of the
    # decoder (single-threaded XLA CPU: 10-15 % of the step at batch 64; slower at batch 10 and 32).
    if B >= _COLUMNS_MIN_BATCH:
      rows = (rows, rows.T)

    def step_closed(carry, xs):
      x, y, mid_mask, out_mask, _ = xs
      zeros = jax.tree_util.tree_map(jnp.zeros_like, carry)

      def top(eps):
        nodes = layers(x, carry["h"], carry["c"], mid_mask, eps)
        return nodes["h"][-1] * out_mask, nodes

      h_top, vjp_fn, nodes = jax.vjp(top, zeros, has_aux=True)
      logits = decode(h_top)
      delta, nll, g_top, logp = _surprisal_closed_form(logits, rows, y, recoding.target)
      (grad,) = vjp_fn(g_top)
      grad = jax.lax.stop_gradient(jax.tree_util.tree_map(_finite, grad))
      eta = step_sizes(recoding, step_params, step_size, nodes)
      new = apply_step(nodes, grad, eta)
      return new, (nll, delta, logp if return_logprobs else None)

    state, (nll, delta, logp) = jax.lax.scan(
      step_closed, state, (emb, targets.T, mid_masks, out_masks, mc_keys)
    )
    logp = jnp.swapaxes(logp, 0, 1) if return_logprobs else None
    return ForwardOut(nll.T, state, logp, delta.T)

  def step(carry, xs):
    x, y, mid_mask, out_mask, k = xs
    zeros = jax.tree_util.tree_map(jnp.zeros_like, carry)

    def error_fn(eps):
      nodes = layers(x, carry["h"], carry["c"], mid_mask, eps)
      delta, logits = signal.fn(
        nodes["h"][-1] * out_mask,
        decode=decode,
        decode_members=decode_members,
        target=y,
        key=k,
        cfg=recoding,
      )
      return delta, (nodes, logits)

    delta, grad, (nodes, logits) = node_gradient(
      error_fn, zeros, has_aux=True, second_order=recoding.second_order
    )
    eta = step_sizes(recoding, step_params, step_size, nodes)
    new = apply_step(nodes, grad, eta)
    if redecode:
      logits = decode(new["h"][-1] * out_mask)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
    return new, (nll, delta, logp if return_logprobs else None)

  state, (nll, delta, logp) = jax.lax.scan(
    step, state, (emb, targets.T, mid_masks, out_masks, mc_keys)
  )
  return ForwardOut(nll.T, state, jnp.swapaxes(logp, 0, 1) if return_logprobs else None, delta.T)
