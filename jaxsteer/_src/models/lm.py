"""``LanguageModel``: a loaded Flax causal LM with its tokenizer, jitted forward and generation.

Interception is part of the model object: ``lm.with_intercept(factory, args)`` returns a model whose
every forward (and every generation step) runs inside ``flax.linen.intercept_methods(factory(args))``
entered *inside* the jitted function. ``factory`` is static (hashable); ``args`` is a pytree of
arrays traced as jit arguments, so new steering vectors or strengths recompile nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsteer._src.compile_options import jit
from jaxsteer._src.models.modules import CausalLM, default_positions

InterceptFactory = Callable[[Any], Callable]


def apply_intercepted(module, factory, params, args, *a, **kw):
  """``module.apply(params, *a, **kw)`` inside the interceptor built by ``factory(args)``.

  ``factory=None`` applies the module plainly; a ``cache`` keyword becomes the ``"cache"``
  collection. Call it inside a jitted function with ``factory`` static and ``args`` traced (what
  ``LanguageModel`` does), so new steering vectors recompile nothing.
  """
  variables = {"params": params}
  cache = kw.pop("cache", None)
  if cache is not None:
    variables["cache"] = cache
  if factory is None:
    return module.apply(variables, *a, **kw)
  with nn.intercept_methods(factory(args)):
    return module.apply(variables, *a, **kw)


_apply = apply_intercepted  # the former private name, still used inside this module


@functools.partial(jit, kind="forward", static_argnames=("module", "factory", "return_hidden"))
def _forward(module, factory, params, args, input_ids, attention_mask, return_hidden=False):
  return _apply(
    module,
    factory,
    params,
    args,
    input_ids,
    attention_mask=attention_mask,
    return_hidden=return_hidden,
  )


@functools.partial(jax.jit, static_argnames=("module",))
def _embed(module, params, input_ids):
  return module.apply({"params": params}, input_ids, method=lambda m, x: m.embed_tokens(x))


def init_cache(module: CausalLM, batch: int, length: int):
  """Zero KV cache for ``batch`` rows and ``length`` slots (shapes from ``eval_shape``)."""
  ids = jnp.zeros((batch, 1), jnp.int32)
  mask = jnp.ones((batch, length), jnp.int32)
  pos = jnp.zeros((batch, 1), jnp.int32)

  def init():
    return module.init(
      jax.random.PRNGKey(0), ids, attention_mask=mask, positions=pos, slots=pos, decode=True
    )["cache"]

  shapes = jax.eval_shape(init)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def sample_token(logits, temperature, top_p, key):
  """Greedy when ``temperature == 0``; otherwise temperature and nucleus (top-p) sampling.

  With a scalar ``temperature`` only the chosen branch runs (``lax.cond``): greedy decoding does
  not pay for the sort over the vocabulary and the random draws that sampling needs.
  """

  def greedy():
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def sampled():
    scaled = logits / jnp.maximum(temperature, 1e-6)
    srt = jnp.sort(scaled, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(srt, axis=-1)
    cum = jnp.cumsum(probs, axis=-1)
    keep = (cum - probs) < top_p  # the most likely token is always kept
    thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
    scaled = jnp.where(scaled < thresh, -jnp.inf, scaled)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)

  if jnp.ndim(temperature) == 0:
    return jax.lax.cond(temperature > 0, sampled, greedy)
  return jnp.where(temperature > 0, sampled(), greedy())


# Prompt widths and generation budgets are rounded up to these multiples, so prompts of similar
# length (and nearby max_new_tokens) share one compiled prefill and one compiled decode loop.
PROMPT_BUCKET = 16
NEW_TOKENS_BUCKET = 16


def _bucket(n: int, multiple: int) -> int:
  return -(-int(n) // multiple) * multiple


def _prefill_impl(
  module,
  factory,
  params,
  args,
  input_ids,
  attention_mask,
  temperature,
  top_p,
  key,
  stop_ids,
  pad_id,
  budget: int,
  stop_at_eos: bool,
  inputs_embeds=None,
):
  """Prefill: fills the KV cache with the prompt and samples the first token of every row.

  Returns the decode state ``(cache, tok, pos, key, done, bad, out, lengths, i)``: ``out`` (B,
  budget) holds the new tokens (``pad_id`` after a row ended), ``lengths`` the tokens each row
  produced (its stop token included), ``bad`` the rows whose logits were not finite.
  """
  b, p = input_ids.shape
  kv_mask = _kv_mask(attention_mask, budget)
  positions = default_positions(attention_mask)
  slots = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None], (b, p))
  cache = init_cache(module, b, p + budget)
  # Prefill on the token ids, or on given input embeddings (a VLM's merged image + text sequence);
  # the decode steps embed the sampled tokens.
  prefill = (input_ids,) if inputs_embeds is None else ()
  logits, upd = _apply(
    module,
    factory,
    params,
    args,
    *prefill,
    inputs_embeds=inputs_embeds,
    cache=cache,
    attention_mask=kv_mask,
    positions=positions,
    slots=slots,
    decode=True,
    mutable=["cache"],
  )
  key, sub = jax.random.split(key)
  last = logits[:, -1]
  bad = ~jnp.all(jnp.isfinite(last), axis=-1)
  tok = jnp.where(bad, pad_id, sample_token(last, temperature, top_p, sub))
  done = bad | (_is_stop(tok, stop_ids) & stop_at_eos)
  out = jnp.full((b, budget), pad_id, jnp.int32).at[:, 0].set(tok)
  lengths = jnp.where(bad, 0, 1).astype(jnp.int32)
  pos = positions[:, -1] + 1
  return (upd["cache"], tok, pos, key, done, bad, out, lengths, jnp.int32(1))


def _kv_mask(attention_mask, budget):
  b = attention_mask.shape[0]
  return jnp.concatenate(
    [attention_mask.astype(jnp.int32), jnp.ones((b, budget), jnp.int32)], axis=1
  )


def _is_stop(tok, stop_ids):
  return jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)


def _decode_impl(
  module,
  factory,
  params,
  args,
  state,
  attention_mask,
  temperature,
  top_p,
  stop_ids,
  pad_id,
  limit,
  stop_at_eos: bool,
):
  """The decode loop, on the device: ``lax.while_loop`` until every row has ended or ``limit``
  tokens were produced."""
  b, p = attention_mask.shape
  budget = state[6].shape[1]
  kv_mask = _kv_mask(attention_mask, budget)

  def cond(state):
    done, i = state[4], state[8]
    return (i < limit) & ~jnp.all(done)

  def step(state):
    cache, tok, pos, key, done, bad, out, lengths, i = state
    logits, upd = _apply(
      module,
      factory,
      params,
      args,
      tok[:, None],
      cache=cache,
      attention_mask=kv_mask,
      positions=pos[:, None],
      slots=jnp.full((b, 1), p + i - 1, jnp.int32),
      decode=True,
      mutable=["cache"],
    )
    key, sub = jax.random.split(key)
    last = logits[:, -1]
    now_bad = ~done & ~jnp.all(jnp.isfinite(last), axis=-1)
    new = sample_token(last, temperature, top_p, sub)
    new = jnp.where(done | now_bad, pad_id, new)
    out = jax.lax.dynamic_update_slice(out, new[:, None], (0, i))
    lengths = lengths + (~done & ~now_bad)
    done = done | now_bad | (_is_stop(new, stop_ids) & stop_at_eos)
    return upd["cache"], new, pos + 1, key, done, bad | now_bad, out, lengths, i + 1

  return jax.lax.while_loop(cond, step, state)


_STATIC = ("module", "factory", "budget", "stop_at_eos")
_prefill = jit(_prefill_impl, kind="forward", static_argnames=_STATIC)
# The state (the KV cache above all) is donated: the loop updates it in place.
_decode = jit(
  _decode_impl,
  kind="decode",
  static_argnames=("module", "factory", "stop_at_eos"),
  donate_argnames=("state",),
)


@dataclasses.dataclass(frozen=True)
class _Intercept:
  factory: InterceptFactory | None = None
  args: Any = None


class LanguageModel:
  """A causal language model: Flax module, parameters, config and tokenizer.

  Attributes:
    module: the ``CausalLM`` Linen module.
    params: its parameter tree (``NamedSharding``-placed when loaded with a mesh).
    config: the ``ModelConfig``.
    tokenizer: ``Llama2cTokenizer``, ``HFTokenizer`` or ``None``.
    mesh: the mesh the parameters live on, or ``None``.

  Example:
    >>> lm = jaxsteer.load("stories260K.bin", tokenizer="tok512.bin")  # doctest: +SKIP
    >>> lm.generate("Once upon a time", max_new_tokens=20)  # doctest: +SKIP
  """

  def __init__(
    self, module, params, config, tokenizer=None, mesh=None, intercept=None, source=None
  ):
    self.source = source
    self.module = module
    self.params = params
    self.config = config
    self.tokenizer = tokenizer
    self.mesh = mesh
    self._intercept = intercept or _Intercept()

  # -- construction helpers ----------------------------------------------------------------------
  def _fields(self) -> dict[str, Any]:
    """Constructor arguments that reproduce this model (subclasses add theirs)."""
    return dict(
      module=self.module,
      params=self.params,
      config=self.config,
      tokenizer=self.tokenizer,
      mesh=self.mesh,
      intercept=self._intercept,
      source=self.source,
    )

  def replace(self, **kw) -> LanguageModel:
    """A copy of this model (of the same class) with some fields replaced."""
    fields = self._fields()
    fields.update(kw)
    return type(self)(**fields)

  def with_intercept(self, factory: InterceptFactory | None, args: Any = None) -> LanguageModel:
    """A model whose forward passes run under ``intercept_methods(factory(args))``.

    ``factory`` must be hashable and stable (a module-level function or a frozen dataclass); it is
    a static jit argument. ``args`` (arrays) are traced, so changing them recompiles nothing.
    """
    return self.replace(intercept=_Intercept(factory, args))

  @property
  def intercept(self) -> tuple[InterceptFactory | None, Any]:
    return self._intercept.factory, self._intercept.args

  @property
  def dtype(self):
    return self.module.dtype

  # -- forward -----------------------------------------------------------------------------------
  def apply(self, params=None, *args, **kwargs):
    """Un-jitted ``module.apply`` under this model's interceptor (for use inside your own jit/grad)."""
    f, a = self.intercept
    return _apply(self.module, f, self.params if params is None else params, a, *args, **kwargs)

  def __call__(self, input_ids, attention_mask=None, *, return_hidden: bool = False):
    """Logits (B, T, V) in float32; with ``return_hidden`` also each layer's residual output."""
    ids = self._check_ids(input_ids)
    attention_mask = self._mask(ids, attention_mask)
    f, a = self.intercept
    return _forward(self.module, f, self.params, a, ids, attention_mask, return_hidden)

  @staticmethod
  def _mask(ids, attention_mask):
    if attention_mask is None:
      return jnp.ones(ids.shape, jnp.int32)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if attention_mask.ndim == 1:
      attention_mask = attention_mask[None]
    if attention_mask.shape != ids.shape:
      raise ValueError(
        f"attention_mask shape {attention_mask.shape} does not match input_ids {ids.shape}"
      )
    return attention_mask

  def embed_inputs(self, input_ids, pixel_values=None, image_sizes=None) -> jax.Array:
    """The decoder's input sequence (B, T, D) for ``input_ids``: the space attribution works in.

    For a language model these are the token embeddings; a vision-language model overrides this to
    merge the projected image features into the image-token positions.
    """
    if pixel_values is not None or image_sizes is not None:
      raise ValueError("this is a language model; it takes no images (pixel_values)")
    ids = self._check_ids(input_ids)
    return _embed(self.module, self.params, ids)

  def _check_ids(self, input_ids, allow_empty=False):
    if isinstance(input_ids, jax.core.Tracer):
      return input_ids
    if isinstance(input_ids, jax.Array) and not input_ids.is_fully_addressable:
      # a global array spanning processes (multi-process): checked without gathering it
      ids = input_ids
      if ids.ndim != 2 or ids.dtype.kind not in "iu" or not ids.shape[1]:
        raise ValueError(f"input_ids must be integer ids of shape (batch, length), got {ids.shape}")
      lo, hi = (int(v) for v in jax.jit(lambda a: (a.min(), a.max()), out_shardings=None)(ids))
      if lo < 0 or hi >= self.config.vocab_size:
        raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got {lo}, {hi}")
      return ids
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
      ids = ids[None]
    if ids.ndim != 2 or (ids.size and ids.dtype.kind not in "iu"):
      raise ValueError(f"input_ids must be integer ids of shape (batch, length), got {ids.shape}")
    if ids.shape[1] == 0 and not allow_empty:
      raise ValueError("empty prompt: input_ids has no tokens")
    if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
      raise ValueError(
        f"token ids must lie in [0, {self.config.vocab_size}); got min {ids.min()}, max {ids.max()}"
      )
    if ids.shape[1] > self.config.max_position_embeddings:
      raise ValueError(
        f"sequence of {ids.shape[1]} tokens is longer than the model's context of "
        f"{self.config.max_position_embeddings}"
      )
    return jax.device_put(ids.astype(np.int32))  # on the host: nothing compiles per shape

  # -- tokenizer ---------------------------------------------------------------------------------
  def _tok(self):
    if self.tokenizer is None:
      raise ValueError("this model has no tokenizer; pass tokenizer= to jaxsteer.load")
    return self.tokenizer

  def encode(self, text: str, add_bos: bool = True) -> list[int]:
    return self._tok().encode(text, add_bos=add_bos)

  def decode(self, ids) -> str:
    return self._tok().decode(np.asarray(ids).reshape(-1).tolist())

  # -- generation --------------------------------------------------------------------------------
  def prepare_batch(self, prompts, pad_multiple: int = 8) -> tuple[jax.Array, jax.Array]:
    """Tokenizes and left-pads prompts: returns ``(input_ids, attention_mask)``.

    The width is rounded up to a multiple of ``pad_multiple`` so that prompts of similar length
    share one compiled program.
    """
    if isinstance(prompts, str) or (
      isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int | np.integer)
    ):
      prompts = [prompts]
    if isinstance(prompts, np.ndarray | jax.Array):
      prompts = [list(r) for r in np.asarray(prompts).reshape(-1, np.shape(prompts)[-1])]
    if not len(prompts):
      raise ValueError("empty prompt: no prompts or token ids given")
    rows = []
    for p in prompts:
      if isinstance(p, str):
        if not p:
          raise ValueError("empty prompt: give text, or token ids such as [bos_id]")
        least = _min_tokens(self.tokenizer, p)
        if least > self.config.max_position_embeddings:  # provably too long: skip tokenising
          raise ValueError(
            f"prompt of {len(p)} characters is at least {least} tokens, longer than the model's "
            f"context of {self.config.max_position_embeddings}"
          )
        p = self.encode(p)
      p = [int(t) for t in p]
      if not p:
        raise ValueError("empty prompt: no token ids")
      rows.append(p)
    width = max(len(r) for r in rows)
    limit = self.config.max_position_embeddings
    if width > limit:
      raise ValueError(f"prompt of {width} tokens is longer than the model's context of {limit}")
    width = max(width, min(-(-width // pad_multiple) * pad_multiple, limit))
    pad = self.pad_id
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
      ids[i, width - len(r) :] = r
      mask[i, width - len(r) :] = 1
    self._check_ids(ids)
    return jnp.asarray(ids), jnp.asarray(mask)

  @property
  def pad_id(self) -> int:
    for cand in (
      getattr(self.tokenizer, "pad_id", None),
      self.config.pad_token_id,
      self.config.eos_token_id,
    ):
      if cand is not None:
        return int(cand)
    return 0

  def generate_ids(
    self,
    input_ids,
    attention_mask=None,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
    inputs_embeds=None,
    eos_token_ids=None,
    return_lengths: bool = False,
  ):
    """New token ids (B, max_new_tokens) with KV caching; rows that ended are padded.

    A row ends at any id of ``eos_token_ids`` (default: the config's ``stop_ids``, e.g. all of
    Llama 3 instruct's end tokens); the decode loop runs on the device and stops as soon as every
    row has ended. Prompts are left-padded to a multiple of ``PROMPT_BUCKET`` and the token budget
    rounded up to a multiple of ``NEW_TOKENS_BUCKET``, so similar prompts reuse the compiled
    programs.

    Args:
      input_ids: (B, T) prompt ids (left-padded when ``attention_mask`` marks padding).
      attention_mask: (B, T) 1 for real tokens.
      max_new_tokens: most tokens per row.
      temperature: 0 = greedy.
      top_p: nucleus sampling mass.
      seed: sampling seed.
      stop_at_eos: end rows at a stop id (else always ``max_new_tokens``).
      inputs_embeds: (B, T, D) replace the token embeddings of ``input_ids`` in the prefill (a
        VLM's merged image + text sequence); ``input_ids`` still fix the shape.
      eos_token_ids: an id or ids that end a row (overrides the config's).
      return_lengths: also return each row's number of new tokens (its stop token included).

    Raises:
      FloatingPointError: the model produced NaN or infinite logits for some row (the message names
        the rows); nothing is returned rather than tokens sampled from garbage.
    """
    ids = self._check_ids(input_ids)
    # Host-side (numpy) until the padded shapes are final: eager jnp ops would compile per shape.
    ids = ids if isinstance(ids, jax.core.Tracer) else np.asarray(ids)
    mask = (
      np.ones(ids.shape, np.int32)
      if attention_mask is None
      else np.asarray(attention_mask).astype(np.int32)
    )
    if mask.shape != ids.shape:
      raise ValueError(f"attention_mask shape {mask.shape} does not match input_ids {ids.shape}")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
      raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    real = int(np.asarray(mask).sum(axis=1).max())
    if real + max_new_tokens > self.config.max_position_embeddings:
      raise ValueError(
        f"prompt ({real} tokens) plus max_new_tokens ({max_new_tokens}) exceeds the "
        f"model's context of {self.config.max_position_embeddings}"
      )
    stop = self.config.stop_ids if eos_token_ids is None else _as_ids(eos_token_ids)
    # Padded with -1 (never a token) to a multiple of 4: other stop sets reuse the programs.
    stop = tuple(stop) + (-1,) * (-len(stop) % 4 or (4 if not stop else 0))
    stop_ids = jax.device_put(np.asarray(stop, np.int32))
    embeds = _check_embeds(inputs_embeds, ids.shape, self.config.hidden_size)
    width = _bucket(ids.shape[1], PROMPT_BUCKET)
    ids, mask, embeds = _left_pad(ids, mask, embeds, width, self.pad_id)
    ids, mask = jax.device_put(ids.astype(np.int32)), jax.device_put(mask.astype(np.int32))
    budget = _bucket(max_new_tokens, NEW_TOKENS_BUCKET)
    f, a = self.intercept
    temp, tp, pad = jnp.float32(temperature), jnp.float32(top_p), jnp.int32(self.pad_id)
    state = _prefill(
      self.module,
      f,
      self.params,
      a,
      ids,
      mask,
      temp,
      tp,
      jax.random.PRNGKey(seed),
      stop_ids,
      pad,
      budget=budget,
      stop_at_eos=bool(stop_at_eos),
      inputs_embeds=embeds,
    )
    state = _decode(
      self.module,
      f,
      self.params,
      a,
      state,
      mask,
      temp,
      tp,
      stop_ids,
      pad,
      jnp.int32(max_new_tokens),
      stop_at_eos=bool(stop_at_eos),
    )
    out, lengths, bad = (np.asarray(x) for x in (state[6], state[7], state[5]))
    if bad.any():
      rows = np.flatnonzero(bad).tolist()
      raise FloatingPointError(
        f"non-finite logits (NaN or inf) while generating rows {rows} (after "
        f"{lengths[bad].tolist()} new tokens); check the parameters, the steering strength and "
        "the dtype"
      )
    out = out[:, :max_new_tokens]
    return (out, lengths) if return_lengths else out

  def generate(self, prompt_or_ids, *, max_new_tokens: int = 32, **kw):
    """Generates continuations.

    Args:
      prompt_or_ids: a string, a list of strings, a list of token ids, or a (B, T) id array.
      max_new_tokens: number of tokens to produce.
      **kw: ``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stop_at_eos``.

    Returns:
      A string for a string, a list of strings for a list of strings, else the new ids (B, N).
    """
    ids, mask = self.prepare_batch(prompt_or_ids)
    out = self.generate_ids(ids, mask, max_new_tokens=max_new_tokens, **kw)
    if isinstance(prompt_or_ids, str):
      return self.decode(strip_at_stop(out[0], self.config.stop_ids or None))
    if (
      isinstance(prompt_or_ids, list | tuple)
      and prompt_or_ids
      and isinstance(prompt_or_ids[0], str)
    ):
      return [self.decode(strip_at_stop(r, self.config.stop_ids or None)) for r in out]
    return out


def _as_ids(x) -> tuple[int, ...]:
  ids = tuple(int(v) for v in np.atleast_1d(np.asarray(x)).reshape(-1))
  if not ids:
    raise ValueError("eos_token_ids is empty")
  return ids


def _left_pad(ids, mask, embeds, width, pad_id):
  """Left-pads (B, T) ids and mask (and (B, T, D) embeds) to ``width`` columns."""
  extra = width - ids.shape[1]
  if extra <= 0:
    return ids, mask, embeds
  # numpy, so that padding a new prompt width compiles nothing
  ids = np.pad(np.asarray(ids), ((0, 0), (extra, 0)), constant_values=pad_id)
  mask = np.pad(np.asarray(mask), ((0, 0), (extra, 0)))
  if embeds is not None:
    embeds = jnp.pad(embeds, ((0, 0), (extra, 0), (0, 0)))
  return ids, mask, embeds


def _check_embeds(inputs_embeds, shape, hidden_size):
  if inputs_embeds is None:
    return None
  inputs_embeds = jnp.asarray(inputs_embeds)
  if inputs_embeds.shape != (*shape, hidden_size):
    raise ValueError(
      f"inputs_embeds shape {inputs_embeds.shape} does not match input_ids {tuple(shape)} "
      f"and hidden size {hidden_size}"
    )
  return inputs_embeds


def strip_at_stop(row, eos) -> list:
  """``row`` (token ids) up to its first stop id (``eos``: an id, ids or ``None``)."""
  row = list(row)
  stops = set() if eos is None else set(_as_ids(eos))
  for i, t in enumerate(row):
    if int(t) in stops:
      return row[:i]
  return row


def _min_tokens(tok, text: str) -> int:
  """A lower bound on ``len(tok.encode(text))`` for llama2.c tokenizers, else 0.

  Every llama2.c token stands for at most ``max(len(piece))`` bytes of the text (a byte-fallback
  token for one), so there are at least ``ceil(len(utf8) / longest)`` tokens (BOS and the
  dummy-prefix space left out, so the bound holds whatever the encoder does with them).
  """
  pieces = getattr(tok, "pieces", None)
  if not pieces or not isinstance(pieces, list):
    return 0
  longest = getattr(tok, "_longest_piece", None)
  if longest is None:
    longest = max(max(len(x) for x in pieces), 1)
    try:
      tok._longest_piece = longest
    except AttributeError:
      pass
  return -(-len(text.encode("utf-8")) // longest)
