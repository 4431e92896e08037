"""Recoding: one gradient step on the hidden and cell states of an RNN (Ulmer, 2021).

Paper: D. Ulmer, D. Hupkes, E. Bruni, "Recoding latent sentence representations: dynamic
gradient-based activation modification in RNNs", arXiv:2101.00674 (MSc thesis 2019).

At each time step an error signal ``delta(state)`` (surprisal of the observed token, predictive
entropy, MC-dropout or ensemble uncertainty) is differentiated with respect to the states of every
layer and the states are moved one step against it::

  state' = state - eta * stop_gradient(d delta / d state)

Usage::

  new_state = recode(state, error_fn, 0.5)                      # fixed step size
  signal = get_signal("surprisal")                              # registry of error signals
  delta, logits = signal.fn(h_top, decode=..., decode_members=..., target=y, key=k, cfg=cfg)

Differences from the author's code (``Kaleidophon/tenacious-toucan``) on purpose: non-finite
gradient entries become 0 (not 1); the ensemble entropy averages over members (not the batch);
"surprisal" is -log p by default (``ptok_ppl`` gives the author's p^-p - 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "RecodingConfig",
  "Signal",
  "SIGNALS",
  "STEP_TYPES",
  "get_signal",
  "recode",
  "node_gradient",
  "register_signal",
  "init_step_params",
  "step_sizes",
]

PyTree = Any


# --------------------------------------------------------------------------------------------
# The correction step.


def _finite(g: jax.Array) -> jax.Array:
  return jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g))


def _check_step_size(step_size) -> None:
  """Raises for a concrete negative step size (traced values are checked by the caller)."""
  for leaf in jax.tree_util.tree_leaves(step_size):
    if isinstance(leaf, jax.core.Tracer):
      continue
    arr = np.asarray(leaf)
    if np.any(~np.isfinite(arr)) or np.any(arr < 0):
      raise ValueError(f"step size must be finite and non-negative, got {arr}")


def node_gradient(error_fn, state: PyTree, *, has_aux: bool = False, second_order: bool = False):
  """Gradient of ``sum(error_fn(state))`` w.r.t. ``state``, non-finite entries set to 0.

  Returns ``(error, grad)`` or ``(error, grad, aux)`` with ``has_aux``. Without
  ``second_order`` the gradient is a constant (``stop_gradient``), as in the paper.
  """

  def total(s):
    out = error_fn(s)
    if has_aux:
      err, aux = out
      return jnp.sum(err), (err, aux)
    return jnp.sum(out), (out, None)

  (_, (err, aux)), g = jax.value_and_grad(total, has_aux=True)(state)
  g = jax.tree_util.tree_map(_finite, g)
  if not second_order:
    g = jax.lax.stop_gradient(g)
  return (err, g, aux) if has_aux else (err, g)


def _broadcast_step(step_size, state):
  if isinstance(step_size, dict) and isinstance(state, dict):
    return step_size
  return jax.tree_util.tree_map(lambda _: step_size, state)


def apply_step(state: PyTree, grad: PyTree, step_size) -> PyTree:
  """``state - step_size * grad`` leaf by leaf (``step_size`` scalar or a tree like ``state``)."""
  eta = _broadcast_step(step_size, state)
  return jax.tree_util.tree_map(lambda x, g, e: x - jnp.asarray(e, x.dtype) * g, state, grad, eta)


def recode(
  state: PyTree,
  error_fn: Callable[[PyTree], jax.Array],
  step_size,
  *,
  second_order: bool = False,
  has_aux: bool = False,
):
  """One recoding step ``state - step_size * d sum(error_fn(state)) / d state``.

  Args:
    state: a pytree of arrays, e.g. ``{"h": (L, B, H), "c": (L, B, H)}``.
    error_fn: maps ``state`` to an error (scalar or per example; summed before differentiating,
      which is exact because examples are independent). With ``has_aux`` it returns
      ``(error, aux)``.
    step_size: a non-negative scalar, or a pytree like ``state`` of arrays broadcastable to its
      leaves (per layer, per example). Traced values are allowed (no recompilation).
    second_order: keep the gradient differentiable (the "through-recoding" variant); by default
      it is a constant, as in the paper.
    has_aux: ``error_fn`` returns ``(error, aux)``; then ``(new_state, aux)`` is returned.

  Returns:
    The recoded state (same structure and dtypes), or ``(state, aux)`` with ``has_aux``.
  """
  _check_step_size(step_size)
  out = node_gradient(error_fn, state, has_aux=has_aux, second_order=second_order)
  new_state = apply_step(state, out[1], step_size)
  return (new_state, out[2]) if has_aux else new_state


# --------------------------------------------------------------------------------------------
# Error signals.


@dataclasses.dataclass(frozen=True)
class RecodingConfig:
  """Static recoding settings (hashable; the fixed step size itself is a traced argument).

  Attributes:
    signal: a key of ``SIGNALS``, or ``"none"`` for the plain LSTM.
    step_type: ``fixed`` (the ``step_size`` argument), ``learned`` (softplus of one parameter
      per layer and h/c) or ``mlp`` (a small per-example network on the detached state).
    num_samples: MC-dropout samples S.
    mc_dropout: dropout rate of the MC samples.
    target: token the surprisal signals score: ``gold`` (the observed next token, used only after
      its loss was counted) or ``argmax`` (the model's own prediction; the author's training).
    redecode: predict from the recoded state at the same step; ``None`` picks the signal's
      default (True for label-free signals, never allowed for signals that read the target).
    second_order: differentiate through the recoding gradient during training.
    mlp_hidden: hidden sizes of the ``mlp`` step-size network.
  """

  signal: str = "none"
  step_type: str = "fixed"
  num_samples: int = 10
  mc_dropout: float = 0.2
  target: str = "gold"
  redecode: bool | None = None
  second_order: bool = False
  mlp_hidden: tuple[int, ...] = (300, 100)

  def __post_init__(self):
    if self.signal != "none":
      sig = get_signal(self.signal)
      if self.redecode and sig.needs_target and self.target == "gold":
        raise ValueError(
          f"signal {self.signal!r} reads the next token; re-decoding with it would leak the "
          "target into its own prediction (use redecode=False or target='argmax')"
        )
    if self.step_type not in STEP_TYPES:
      raise ValueError(f"unknown step_type {self.step_type!r}; choose from {sorted(STEP_TYPES)}")
    if self.target not in ("gold", "argmax"):
      raise ValueError(f"target must be 'gold' or 'argmax', got {self.target!r}")
    if self.num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
    if not 0.0 <= self.mc_dropout < 1.0:
      raise ValueError(f"mc_dropout must be in [0, 1), got {self.mc_dropout}")

  @property
  def enabled(self) -> bool:
    return self.signal != "none"

  @property
  def does_redecode(self) -> bool:
    if not self.enabled:
      return False
    sig = get_signal(self.signal)
    if self.redecode is None:
      return not sig.needs_target
    return bool(self.redecode)


@dataclasses.dataclass(frozen=True)
class Signal:
  """An error signal: ``fn(h, *, decode, decode_members, target, key, cfg) -> (delta, logits)``.

  ``delta`` is per example (B,), ``logits`` are ``decode(h)`` (B, V). ``needs_target`` marks
  signals that read the observed next token; they may only recode the state after that token's
  loss has been counted (no re-decoding).
  """

  name: str
  fn: Callable[..., tuple[jax.Array, jax.Array]]
  needs_target: bool
  doc: str = ""


SIGNALS: dict[str, Signal] = {}


def register_signal(name: str, *, needs_target: bool, doc: str = ""):
  def deco(fn):
    SIGNALS[name] = Signal(name, fn, needs_target, doc)
    return fn

  return deco


def get_signal(name: str) -> Signal:
  try:
    return SIGNALS[name]
  except KeyError:
    raise ValueError(f"unknown error signal {name!r}; choose from {sorted(SIGNALS)}") from None


def _entropy(logp: jax.Array) -> jax.Array:
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _target_logp(logits, target, cfg):
  logp = jax.nn.log_softmax(logits, axis=-1)
  if cfg.target == "argmax":
    target = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
  return jnp.take_along_axis(logp, target[..., None].astype(jnp.int32), axis=-1)[..., 0]


@register_signal("surprisal", needs_target=True, doc="-log p(observed next token)")
def _surprisal(h, *, decode, decode_members, target, key, cfg):
  del decode_members, key
  logits = decode(h)
  return -_target_logp(logits, target, cfg), logits


@register_signal("ptok_ppl", needs_target=True, doc="p^-p - 1 of the next token (author's code)")
def _ptok_ppl(h, *, decode, decode_members, target, key, cfg):
  del decode_members, key
  logits = decode(h)
  p = jnp.exp(_target_logp(logits, target, cfg))
  return jnp.exp(-p * jnp.log(jnp.maximum(p, 1e-30))) - 1.0, logits


@register_signal("entropy", needs_target=False, doc="entropy of the predictive distribution")
def _pred_entropy(h, *, decode, decode_members, target, key, cfg):
  del decode_members, target, key, cfg
  logits = decode(h)
  return _entropy(jax.nn.log_softmax(logits, axis=-1)), logits


def _mc_probs(h, decode, key, cfg):
  keep = 1.0 - cfg.mc_dropout
  masks = jax.random.bernoulli(key, keep, (cfg.num_samples, *h.shape)).astype(h.dtype) / keep
  return jax.nn.softmax(jax.vmap(decode)(masks * h[None]), axis=-1)  # (S, B, V)


@register_signal("mc_entropy", needs_target=False, doc="entropy of the MC-dropout mean")
def _mc_entropy(h, *, decode, decode_members, target, key, cfg):
  del decode_members, target
  p = jnp.mean(_mc_probs(h, decode, key, cfg), axis=0)
  return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1), decode(h)


@register_signal("mc_variance", needs_target=False, doc="sum over words of MC-dropout variance")
def _mc_variance(h, *, decode, decode_members, target, key, cfg):
  del decode_members, target
  p = _mc_probs(h, decode, key, cfg)
  return jnp.sum(jnp.var(p, axis=0), axis=-1), decode(h)


@register_signal("ensemble_entropy", needs_target=False, doc="entropy of the member-mean (BAE)")
def _ensemble_entropy(h, *, decode, decode_members, target, key, cfg):
  del target, key, cfg
  member_logits = decode_members(h)  # (K, B, V)
  p = jnp.mean(jax.nn.softmax(member_logits, axis=-1), axis=0)  # mean over members (not batch)
  return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1), jnp.mean(member_logits, axis=0)


# --------------------------------------------------------------------------------------------
# Step sizes.

STEP_TYPES = ("fixed", "learned", "mlp")


def init_step_params(key, cfg: RecodingConfig, num_layers: int, hidden: int, dtype=jnp.float32):
  """Parameters of the step-size predictor: ``{}`` for fixed, per (layer, h/c) otherwise."""
  if not cfg.enabled or cfg.step_type == "fixed":
    return {}
  if cfg.step_type == "learned":
    kh, kc = jax.random.split(key)
    return {
      "h": jax.random.uniform(kh, (num_layers,), dtype),
      "c": jax.random.uniform(kc, (num_layers,), dtype),
    }
  sizes = (hidden, *cfg.mlp_hidden, 1)
  params = {}
  for kind, k in zip(("h", "c"), jax.random.split(key)):
    layers = []
    for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
      kw = jax.random.fold_in(k, i)
      lim = 1.0 / np.sqrt(fi)
      layers.append(
        {
          "w": jax.random.uniform(kw, (num_layers, fi, fo), dtype, -lim, lim),
          "b": jnp.zeros((num_layers, fo), dtype),
        }
      )
    params[kind] = layers
  return params


def _mlp(layers, x):  # x (L, B, H) -> (L, B, 1)
  for i, lyr in enumerate(layers):
    x = jnp.einsum("lbi,lio->lbo", x, lyr["w"]) + lyr["b"][:, None, :]
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return jax.nn.softplus(x)


def step_sizes(cfg: RecodingConfig, step_params, step_size, nodes):
  """Step sizes ``{"h": ..., "c": ...}`` broadcastable to ``nodes`` leaves (L, B, H)."""
  if cfg.step_type == "fixed":
    return {"h": step_size, "c": step_size}
  if cfg.step_type == "learned":
    return {k: jax.nn.softplus(step_params[k])[:, None, None] for k in ("h", "c")}
  return {k: _mlp(step_params[k], jax.lax.stop_gradient(nodes[k])) for k in ("h", "c")}
